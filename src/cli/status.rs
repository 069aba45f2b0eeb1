//! `meshpath status` and `meshpath clustermesh status`: the agent's health and its remote clusters,
//! now or (`--wait`) once they are well, with an exit code that says which.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use meshpath_api::{clustermesh, status, AgentStatus, Client, ClientError};

use super::args::{ClustermeshStatusArgs, Output, StatusArgs, WaitArgs};
use super::output;

/// How often `--wait` asks again.
const POLL: Duration = Duration::from_secs(1);

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.query.client();
    // The table and the brief line need no lists: the summary is cheap at any scale.
    let fetch = |c: &Client| match args.query.output {
        Output::Json => c.status(),
        Output::Table => c.summary(),
    };
    let status = wait(&client, &args.wait, fetch, |s| s.problems().is_empty())?;
    let healthy = status.problems().is_empty();
    match (args.brief, args.query.output) {
        (true, _) => output::println(&status::brief(&status))?,
        (false, Output::Json) => output::json(&status)?,
        (false, Output::Table) => output::print(&status::render(&status))?,
    }
    Ok(exit(healthy))
}

pub fn clustermesh(args: ClustermeshStatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.query.client();
    let all_ready = |s: &AgentStatus| {
        s.clustermesh
            .as_ref()
            .is_some_and(|mesh| mesh.values().all(|r| r.ready))
    };
    let status = wait(&client, &args.wait, Client::summary, all_ready)?;
    let ready = all_ready(&status);
    match args.query.output {
        Output::Json => output::json(&status.clustermesh)?,
        Output::Table => {
            let mut text = clustermesh::render(status.clustermesh.as_ref());
            if let Some(watch) = &status.external_workloads_watch {
                text += &clustermesh::render_external_workloads_watch(watch);
            }
            output::print(&text)?
        }
    }
    Ok(exit(ready))
}

/// The status now, or with `--wait` the first that is `good` (the last seen if none is in time).
/// While waiting, an agent that does not answer yet is waited for too.
fn wait(
    client: &Client,
    args: &WaitArgs,
    fetch: impl Fn(&Client) -> Result<AgentStatus, ClientError>,
    good: impl Fn(&AgentStatus) -> bool,
) -> anyhow::Result<AgentStatus> {
    if !args.wait {
        return Ok(fetch(client)?);
    }
    let deadline = Instant::now() + args.wait_duration;
    loop {
        let seen = fetch(client);
        let done = Instant::now() >= deadline;
        match seen {
            Ok(status) if good(&status) || done => return Ok(status),
            Err(error) if done => {
                return Err(anyhow::Error::new(error).context(format!(
                    "still no answer after waiting {}",
                    humantime::format_duration(args.wait_duration)
                )))
            }
            _ => std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))),
        }
    }
}

fn exit(good: bool) -> ExitCode {
    match good {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}
