//! What a figure was measured on: the commit and compiler of the benchmark binary, the machine, the
//! time and the JSON's schema. Every scenario's JSON carries it under `provenance`, and its table
//! opens with it, so a figure read later names the code and the machine it belongs to.

use serde::{Deserialize, Serialize};

/// The layout of the benchmarks' JSON: raised whenever a key changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub schema_version: u32,
    /// The subcommand that measured: `pipeline`, `sync`, `forward`, `restart`, `rr`.
    pub scenario: String,
    /// The commit the binary was built from (full hash), or `unknown` outside a checkout.
    pub git_commit: String,
    /// The measured crates differed from that commit when the binary was built.
    pub git_dirty: bool,
    /// `rustc --version` of the compiler that built the binary.
    pub rustc: String,
    /// Built with optimisations (`--release`): figures of a debug build mean little.
    pub release_build: bool,
    /// `model name` of the first processor in /proc/cpuinfo.
    pub cpu_model: String,
    /// Cores the OS lets this process run on.
    pub cpus: usize,
    /// The running kernel (`uname -r`).
    pub kernel: String,
    /// When the measurement began, RFC 3339 in UTC to the second.
    pub utc_time: String,
    /// The host's 1-minute load average at that moment: other work on these cores skews figures.
    pub load_average_1m: Option<f64>,
}

impl Provenance {
    /// The provenance of a measurement of `scenario` starting now.
    pub fn now(scenario: &str) -> Provenance {
        Provenance {
            schema_version: SCHEMA_VERSION,
            scenario: scenario.to_owned(),
            git_commit: env!("MESHPATH_PERF_COMMIT").to_owned(),
            git_dirty: env!("MESHPATH_PERF_DIRTY") == "true",
            rustc: env!("MESHPATH_PERF_RUSTC").to_owned(),
            release_build: !cfg!(debug_assertions),
            cpu_model: read("/proc/cpuinfo")
                .and_then(|info| cpu_model(&info))
                .unwrap_or_else(|| "unknown".to_owned()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned()),
            utc_time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            load_average_1m: read("/proc/loadavg").and_then(|l| load_average(&l)),
        }
    }

    /// The commit as people quote it: 12 hex digits, `-dirty` when the tree differed.
    pub fn short_commit(&self) -> String {
        let short: String = self.git_commit.chars().take(12).collect();
        match self.git_dirty {
            true => format!("{short}-dirty"),
            false => short,
        }
    }

    /// One line for the top of a table.
    pub fn line(&self) -> String {
        let load = self
            .load_average_1m
            .map_or("unknown".to_owned(), |l| format!("{l:.2}"));
        format!(
            "{} at {} ({}{}), {} × {}, Linux {}, {}, load average {load}, schema {}",
            self.scenario,
            self.short_commit(),
            self.rustc,
            if self.release_build {
                ""
            } else {
                ", DEBUG build"
            },
            self.cpus,
            self.cpu_model,
            self.kernel,
            self.utc_time,
            self.schema_version,
        )
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

fn load_average(loadavg: &str) -> Option<f64> {
    loadavg.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_model_and_load_average() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor\t: 0\n"), None);
        assert_eq!(load_average("0.42 0.88 1.11 1/200 12345\n"), Some(0.42));
        assert_eq!(load_average(""), None);
    }

    #[test]
    fn stamps_this_build_and_machine() {
        let p = Provenance::now("pipeline");
        assert_eq!(p.schema_version, SCHEMA_VERSION);
        assert_eq!(p.scenario, "pipeline");
        assert!(
            p.git_commit == "unknown" || p.git_commit.len() == 40,
            "{}",
            p.git_commit
        );
        assert!(p.rustc.starts_with("rustc "), "{}", p.rustc);
        assert!(p.utc_time.ends_with('Z'), "{}", p.utc_time);
        assert!(p.line().contains(&p.short_commit()));
    }
}
