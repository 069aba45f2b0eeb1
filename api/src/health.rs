//! Whether an agent works: what its health endpoint answers (`/livez`, `/readyz`, `/healthz` on
//! 127.0.0.1:9879, as Cilium's agent serves its health on that port) and the `Health:` line of
//! `meshpath status`, whose exit code follows it.
//!
//! Live: the agent's parts make progress — the dataplane worker's loop (it beats every turn, busy or
//! idle) and the control loop. Ready: it forwards with real state — the local source has synced and
//! the first table snapshot built from it is installed for the workers.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Every check of kind `liveness` passes.
    pub live: bool,
    /// Live, and every check of kind `readiness` passes.
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// One thing the agent checks about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: CheckName,
    pub kind: CheckKind,
    pub state: CheckState,
    /// What was seen: `1234 turns, last 0.0s ago`, `no progress for 7.2s`, `waiting for …`.
    pub detail: String,
}

named_enum! {
    pub enum CheckName ("health check") {
        /// The dataplane worker's loop.
        Worker => "worker",
        /// The agent's control runtime (sockets, snapshot builder, remote clusters).
        ControlLoop => "control-loop",
        /// The local source (YAML directory or Kubernetes) has delivered its first complete state.
        LocalSource => "local-source",
        /// A table snapshot built from the local state is installed for the workers.
        Snapshot => "snapshot",
    }
}

named_enum! {
    pub enum CheckKind ("health check kind") {
        Liveness => "liveness",
        Readiness => "readiness",
    }
}

named_enum! {
    pub enum CheckState ("health check state") {
        Ok => "ok",
        /// Not yet: normal while the agent starts.
        Waiting => "waiting",
        Failing => "failing",
    }
}

impl Health {
    /// Folds checks into liveness and readiness.
    pub fn of(checks: Vec<Check>) -> Health {
        let passes = |kind: CheckKind| {
            checks
                .iter()
                .filter(|c| c.kind == kind)
                .all(|c| c.state == CheckState::Ok)
        };
        let live = passes(CheckKind::Liveness);
        let ready = live && passes(CheckKind::Readiness);
        Health {
            live,
            ready,
            checks,
        }
    }

    /// `Ok`, or what is wrong: `Failing: worker: no progress for 7.2s`.
    pub fn summary(&self) -> String {
        let wrong: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.state != CheckState::Ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        match (self.live, self.ready) {
            (true, true) => "Ok".to_owned(),
            (true, false) => format!("Not ready: {}", wrong.join("; ")),
            (false, _) => format!("Failing: {}", wrong.join("; ")),
        }
    }
}

/// The checks one per line, as `meshpath status --verbose` and the endpoint's text show them.
pub fn render(health: &Health) -> String {
    let mut out = String::new();
    for c in &health.checks {
        let _ = writeln!(
            out,
            "  {:<13} {:<9} {:<8} {}",
            c.name.name(),
            c.kind.name(),
            c.state.name(),
            c.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: CheckName, kind: CheckKind, state: CheckState) -> Check {
        Check {
            name,
            kind,
            state,
            detail: format!("{name} is {state}"),
        }
    }

    #[test]
    fn liveness_and_readiness_fold_their_checks() {
        use CheckKind::*;
        use CheckName::*;
        use CheckState::*;
        let all_ok = Health::of(vec![
            check(Worker, Liveness, Ok),
            check(Snapshot, Readiness, Ok),
        ]);
        assert!(all_ok.live && all_ok.ready);
        assert_eq!(all_ok.summary(), "Ok");

        let starting = Health::of(vec![
            check(Worker, Liveness, Ok),
            check(Snapshot, Readiness, Waiting),
        ]);
        assert!(starting.live && !starting.ready);
        assert_eq!(
            starting.summary(),
            "Not ready: snapshot: snapshot is waiting"
        );

        let stuck = Health::of(vec![
            check(Worker, Liveness, Failing),
            check(Snapshot, Readiness, Ok),
        ]);
        assert!(!stuck.live && !stuck.ready, "a dead agent is not ready");
        assert_eq!(stuck.summary(), "Failing: worker: worker is failing");
    }

    #[test]
    fn serialised_by_name() {
        let health = Health::of(vec![check(
            CheckName::ControlLoop,
            CheckKind::Liveness,
            CheckState::Ok,
        )]);
        let json = serde_json::to_value(&health).unwrap();
        assert_eq!(json["checks"][0]["name"], "control-loop");
        assert_eq!(json["checks"][0]["kind"], "liveness");
        assert_eq!(json["checks"][0]["state"], "ok");
        let back: Health = serde_json::from_value(json).unwrap();
        assert_eq!(back, health);
    }
}
