//! `meshpath-cni`: the CNI plugin (spec 1.0.0; STATUS from 1.1.0) that makes a pod's veth, gives it
//! addresses from the node's pod CIDRs and has the meshpath agent attach it to the dataplane.
//!
//! A runtime runs it with `CNI_COMMAND` and the other `CNI_*` variables, the network configuration on
//! stdin; it answers with a result (ADD), nothing (DEL, CHECK, STATUS) or the spec's error JSON on
//! stdout and a non-zero exit. The configuration's own keys: `agentSocket` (the agent's pod socket,
//! default `/run/meshpath/agent.sock.cni`) and `dataDir` (the addresses handed out, default
//! `/var/lib/meshpath/cni`). A runtime asks for specific addresses as host-local lets it: `IP=` in
//! `CNI_ARGS`, or `runtimeConfig.ips` through the `ips` capability the conflist declares.

mod ipam;
mod link;
mod plugin;
mod spec;

use std::io::{Read, Write};
use std::process::ExitCode;

use spec::{
    CniError, Command, Env, ErrorCode, NetConf, VersionOnly, VersionOutput, SUPPORTED_VERSIONS,
};

fn main() -> ExitCode {
    let mut input = Vec::new();
    let read = std::io::stdin().read_to_end(&mut input);
    let version = serde_json::from_slice::<VersionOnly>(&input)
        .ok()
        .map(|v| v.cni_version)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| SUPPORTED_VERSIONS[0].to_owned());
    let outcome = match read {
        Ok(_) => run(&input, &version),
        Err(e) => Err(CniError::new(
            ErrorCode::Io,
            "reading the network configuration",
            e.to_string(),
        )),
    };
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(output) => {
            if let Some(text) = output {
                let _ = writeln!(stdout, "{text}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let text = serde_json::to_string(&error.output(&version)).unwrap_or_default();
            let _ = writeln!(stdout, "{text}");
            ExitCode::FAILURE
        }
    }
}

/// What to print on success.
fn run(input: &[u8], version: &str) -> Result<Option<String>, CniError> {
    let env = Env::read(|name| std::env::var(name).ok())?;
    if env.command == Command::Version {
        let answer = VersionOutput {
            cni_version: version.to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        };
        return Ok(serde_json::to_string(&answer).ok());
    }
    let conf = NetConf::parse(input)?;
    let no_netns = || {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid CNI environment",
            "CNI_NETNS is not set",
        )
    };
    match (env.command, env.container.as_ref()) {
        (Command::Status, _) => plugin::status(&conf).map(|()| None),
        (Command::Add, Some(container)) => {
            let netns = env.netns.as_deref().ok_or_else(no_netns)?;
            let pod = env.pod.as_ref().ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "invalid CNI environment",
                    "CNI_ARGS names no pod",
                )
            })?;
            let mut requested = env.requested_ips.clone();
            requested.extend(conf.requested_ips()?);
            let result = plugin::add(&conf, container, netns, pod, &requested)?;
            Ok(serde_json::to_string(&result).ok())
        }
        (Command::Del, Some(container)) => plugin::del(&conf, container).map(|()| None),
        (Command::Check, Some(container)) => {
            let netns = env.netns.as_deref().ok_or_else(no_netns)?;
            plugin::check(&conf, container, netns).map(|()| None)
        }
        _ => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid CNI environment",
            "CNI_CONTAINERID is not set",
        )),
    }
}
