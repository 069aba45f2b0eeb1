//! `meshpath observe`: the flows agents decided on, as `hubble observe` shows them — the same
//! filters (applied by the agent), the same line, Hubble's JSON — from one agent, or (`--socket`
//! given again for each) from several, merged in time order as Hubble Relay merges its nodes'.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use meshpath_api::client::{ObserveRequest, DEFAULT_SOCKET};
use meshpath_api::flow::{self, FlowResponse, FlowTime, RenderOptions, Verdict};
use meshpath_api::flow_filter::{
    End, Filter, FilterProtocol, FlowFilters, LabelSelector, PodPattern,
};
use meshpath_api::node::Cidr;

use super::merge;
use super::output;

/// How many kept flows `meshpath observe` shows without `--last`, as hubble.
const DEFAULT_LAST: u64 = 20;

#[derive(Args)]
pub struct ObserveArgs {
    /// An agent's status socket (its observe socket is beside it); give it once per agent for a
    /// mesh-wide view, every agent's flows merged in time order.
    #[arg(long, env = "MESHPATH_SOCKET", value_name = "PATH", value_delimiter = ',',
          default_value = DEFAULT_SOCKET)]
    pub socket: Vec<PathBuf>,
    /// Output format: `compact` (hubble's line), `json`/`jsonpb` (Hubble's GetFlowsResponse, one per
    /// line), `dict` (a field per line).
    #[arg(short, long, value_enum, default_value_t = ObserveOutput::Compact)]
    pub output: ObserveOutput,
    /// Keep printing new flows until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Show the last N flows the agent kept (default 20; with --follow, none unless given).
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub last: Option<u64>,
    /// Show every flow the agent kept.
    #[arg(long)]
    pub all: bool,
    /// Only flows since this time: RFC 3339 (`2025-01-31T12:00:00Z`) or a time ago (`5m`, `1h30m`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<FlowTime>,
    /// Only flows until this time (RFC 3339 or a time ago); --follow stops there.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<FlowTime>,
    /// Print the node that saw each flow (always with more than one --socket).
    #[arg(long)]
    pub print_node_name: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `hubble observe`'s filters: what `meshpath observe` sends the agents, and what the service map's
/// page takes as its filter line (`meshpath ui`).
#[derive(Args)]
pub struct FilterArgs {
    /// Flows from or to pods with this name prefix (`x-wing`, `default/x-wing`, or `kube-system/`).
    #[arg(long, value_name = "[NAMESPACE/]POD")]
    pub pod: Vec<PodPattern>,
    /// Flows from pods with this name prefix.
    #[arg(long, value_name = "[NAMESPACE/]POD")]
    pub from_pod: Vec<PodPattern>,
    /// Flows to pods with this name prefix.
    #[arg(long, value_name = "[NAMESPACE/]POD")]
    pub to_pod: Vec<PodPattern>,
    /// Flows from or to pods of this namespace.
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Vec<String>,
    /// Flows from pods of this namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub from_namespace: Vec<String>,
    /// Flows to pods of this namespace.
    #[arg(long, value_name = "NAMESPACE")]
    pub to_namespace: Vec<String>,
    /// Flows from or to this address or CIDR.
    #[arg(long, value_name = "IP[/LEN]", value_parser = parse_cidr)]
    pub ip: Vec<Cidr>,
    /// Flows from this address or CIDR.
    #[arg(long, value_name = "IP[/LEN]", value_parser = parse_cidr)]
    pub from_ip: Vec<Cidr>,
    /// Flows to this address or CIDR.
    #[arg(long, value_name = "IP[/LEN]", value_parser = parse_cidr)]
    pub to_ip: Vec<Cidr>,
    /// Flows from or to this port.
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Flows from this port.
    #[arg(long, value_name = "PORT")]
    pub from_port: Vec<u16>,
    /// Flows to this port.
    #[arg(long, value_name = "PORT")]
    pub to_port: Vec<u16>,
    /// Flows of this protocol: tcp, udp, icmp (either), icmpv4, icmpv6.
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_protocol)]
    pub protocol: Vec<FilterProtocol>,
    /// Flows from or to endpoints whose labels match this selector (`app=x-wing,tier in (a,b)`).
    #[arg(short, long, value_name = "SELECTOR")]
    pub label: Vec<LabelSelector>,
    /// Flows from endpoints whose labels match this selector.
    #[arg(long, value_name = "SELECTOR")]
    pub from_label: Vec<LabelSelector>,
    /// Flows to endpoints whose labels match this selector.
    #[arg(long, value_name = "SELECTOR")]
    pub to_label: Vec<LabelSelector>,
    /// Flows from or to this security identity (a number, or host, world, remote-node).
    #[arg(long, value_name = "IDENTITY", value_parser = parse_identity)]
    pub identity: Vec<u32>,
    /// Flows from this security identity.
    #[arg(long, value_name = "IDENTITY", value_parser = parse_identity)]
    pub from_identity: Vec<u32>,
    /// Flows to this security identity.
    #[arg(long, value_name = "IDENTITY", value_parser = parse_identity)]
    pub to_identity: Vec<u32>,
    /// Flows with this verdict: FORWARDED or DROPPED (any case).
    #[arg(long, value_name = "VERDICT", value_parser = parse_verdict)]
    pub verdict: Vec<Verdict>,
    /// Flows seen by nodes matching this pattern (`cluster1/*`, `c1-n*`).
    #[arg(long, value_name = "PATTERN")]
    pub node_name: Vec<String>,
    /// Negate the filter that follows: `--not --verdict forwarded`.
    #[arg(long, action = clap::ArgAction::Count)]
    pub not: u8,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObserveOutput {
    /// One line per flow, as `hubble observe`.
    Compact,
    /// Hubble's GetFlowsResponse as JSON, one per line.
    Json,
    /// The same as json (hubble's name for it).
    Jsonpb,
    /// One field per line.
    Dict,
}

pub fn observe(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let raw: Vec<String> = std::env::args().collect();
    let request = request(&args, &negated_filters(&raw))?;
    let options = RenderOptions {
        node_name: args.print_node_name || args.socket.len() > 1,
    };
    let print = |event: &FlowResponse| -> anyhow::Result<()> {
        match args.output {
            ObserveOutput::Compact => output::println(&flow::render(event, options)),
            ObserveOutput::Json | ObserveOutput::Jsonpb => {
                output::println(&serde_json::to_string(event)?)
            }
            ObserveOutput::Dict => output::print(&format!(
                "{}------------\n",
                flow::render_dict(event, options)
            )),
        }
    };
    merge::observe(&args.socket, &request, print)
}

/// The request the agents are sent: the window, the last N and the filters.
fn request(args: &ObserveArgs, negated: &[(&'static str, bool)]) -> anyhow::Result<ObserveRequest> {
    let last = match (args.all, args.last, args.follow, args.since) {
        (true, _, _, _) => None,
        (false, Some(n), _, _) => Some(n),
        (false, None, true, _) => Some(0),
        (false, None, false, Some(_)) => None,
        (false, None, false, None) => Some(DEFAULT_LAST),
    };
    Ok(ObserveRequest {
        follow: args.follow,
        last,
        since: args.since,
        until: args.until,
        filters: filters(&args.filter, negated),
    })
}

/// Every filter given, each in the allow list or (after `--not`) the deny list.
fn filters(args: &FilterArgs, negated: &[(&'static str, bool)]) -> FlowFilters {
    let mut filters = FlowFilters::default();
    let mut add = |flag: &'static str, made: Vec<Filter>| {
        let mut occurrences = negated.iter().filter(|(f, _)| *f == flag).map(|(_, n)| *n);
        for filter in made {
            match occurrences.next().unwrap_or(false) {
                true => filters.deny.push(filter),
                false => filters.allow.push(filter),
            }
        }
    };
    let ends = [
        ("", End::Either),
        ("from-", End::Source),
        ("to-", End::Destination),
    ];
    let pods = [&args.pod, &args.from_pod, &args.to_pod];
    let namespaces = [&args.namespace, &args.from_namespace, &args.to_namespace];
    let ips = [&args.ip, &args.from_ip, &args.to_ip];
    let ports = [&args.port, &args.from_port, &args.to_port];
    let labels = [&args.label, &args.from_label, &args.to_label];
    let identities = [&args.identity, &args.from_identity, &args.to_identity];
    for (i, (prefix, end)) in ends.into_iter().enumerate() {
        let flag = |name: &str| flag_name(&format!("{prefix}{name}"));
        let made = pods[i].iter().map(|pod| Filter::Pod {
            end,
            pod: pod.clone(),
        });
        add(flag("pod"), made.collect());
        let made = namespaces[i].iter().map(|ns| Filter::Namespace {
            end,
            namespace: ns.clone(),
        });
        add(flag("namespace"), made.collect());
        let made = ips[i].iter().map(|cidr| Filter::Ip { end, cidr: *cidr });
        add(flag("ip"), made.collect());
        let made = ports[i]
            .iter()
            .map(|port| Filter::Port { end, port: *port });
        add(flag("port"), made.collect());
        let made = labels[i].iter().map(|s| Filter::Label {
            end,
            selector: s.clone(),
        });
        add(flag("label"), made.collect());
        let made = identities[i]
            .iter()
            .map(|id| Filter::Identity { end, identity: *id });
        add(flag("identity"), made.collect());
    }
    let made = args
        .protocol
        .iter()
        .map(|p| Filter::Protocol { protocol: *p });
    add("protocol", made.collect());
    let made = args.verdict.iter().map(|v| Filter::Verdict { verdict: *v });
    add("verdict", made.collect());
    let made = args
        .node_name
        .iter()
        .map(|p| Filter::NodeName { pattern: p.clone() });
    add("node-name", made.collect());
    filters
}

/// A line of filter flags as a shell would split it (`--verdict dropped --not --pod x-wing`), as
/// `meshpath observe` takes them; the error says which flag or value is wrong.
pub fn parse_filters(words: &[String]) -> Result<FlowFilters, clap::Error> {
    #[derive(clap::Parser)]
    #[command(name = "filter", no_binary_name = true, disable_help_flag = true)]
    struct Line {
        #[command(flatten)]
        filter: FilterArgs,
    }
    let line = <Line as clap::Parser>::try_parse_from(words)?;
    let flags: Vec<String> = std::iter::once(String::new())
        .chain(words.iter().cloned())
        .collect();
    Ok(filters(&line.filter, &negated_filters(&flags)))
}

/// The filter flags, by their long names.
const FILTER_FLAGS: [&str; 21] = [
    "pod",
    "from-pod",
    "to-pod",
    "namespace",
    "from-namespace",
    "to-namespace",
    "ip",
    "from-ip",
    "to-ip",
    "port",
    "from-port",
    "to-port",
    "label",
    "from-label",
    "to-label",
    "identity",
    "from-identity",
    "to-identity",
    "protocol",
    "verdict",
    "node-name",
];

fn flag_name(name: &str) -> &'static str {
    FILTER_FLAGS
        .iter()
        .copied()
        .find(|f| *f == name)
        .unwrap_or("")
}

/// Each filter flag's occurrences on the command line, in order, and whether a `--not` came
/// before it (clap gives each flag's values in order, but not how they interleave with `--not`).
fn negated_filters(raw: &[String]) -> Vec<(&'static str, bool)> {
    let mut out = Vec::new();
    let mut pending = false;
    for arg in raw {
        if arg == "--" {
            break;
        }
        if arg == "--not" {
            pending = true;
            continue;
        }
        let name = match arg.strip_prefix("--") {
            Some(long) => long.split('=').next().unwrap_or_default(),
            None if arg.starts_with("-n") => "namespace",
            None if arg.starts_with("-l") => "label",
            None => continue,
        };
        if let Some(flag) = FILTER_FLAGS.iter().find(|f| **f == name) {
            out.push((*flag, pending));
            pending = false;
        }
    }
    out
}

/// RFC 3339, or a duration ago (`5m`).
fn parse_time(text: &str) -> Result<FlowTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        let at = SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        return Ok(FlowTime(at));
    }
    humantime::parse_rfc3339_weak(text)
        .map(FlowTime)
        .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor a duration ago such as 5m"))
}

/// An address (a host prefix) or a CIDR.
fn parse_cidr(text: &str) -> Result<Cidr, String> {
    if let Ok(address) = text.parse::<std::net::IpAddr>() {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        return Ok(Cidr {
            address,
            prefix_len,
        });
    }
    text.parse()
        .map_err(|e: meshpath_api::node::BadCidr| e.to_string())
}

/// A number, or a reserved identity by Cilium's name.
fn parse_identity(text: &str) -> Result<u32, String> {
    match text {
        "host" => Ok(1),
        "world" => Ok(2),
        "remote-node" => Ok(6),
        _ => text
            .parse()
            .map_err(|_| format!("`{text}` is no identity (a number, host, world or remote-node)")),
    }
}

fn parse_protocol(text: &str) -> Result<FilterProtocol, String> {
    text.to_lowercase()
        .parse()
        .map_err(|_| format!("`{text}` is no protocol (tcp, udp, icmp, icmpv4 or icmpv6)"))
}

fn parse_verdict(text: &str) -> Result<Verdict, String> {
    text.to_uppercase()
        .parse()
        .map_err(|_| format!("`{text}` is no verdict (FORWARDED or DROPPED)"))
}

/// How long the merge of several agents' streams holds a flow back for a late one from another.
pub const MERGE_WINDOW: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: ObserveArgs,
    }

    fn parse(line: &[&str]) -> (ObserveArgs, Vec<String>) {
        let raw: Vec<String> = std::iter::once("observe")
            .chain(line.iter().copied())
            .map(String::from)
            .collect();
        (Harness::parse_from(&raw).args, raw)
    }

    #[test]
    fn not_negates_the_filter_after_it() {
        let (args, raw) = parse(&[
            "--pod",
            "x-wing",
            "--not",
            "--verdict",
            "forwarded",
            "--verdict",
            "DROPPED",
        ]);
        let asked = request(&args, &negated_filters(&raw)).unwrap();
        assert_eq!(asked.filters.allow.len(), 2, "{:?}", asked.filters);
        assert_eq!(
            asked.filters.deny,
            [Filter::Verdict {
                verdict: Verdict::Forwarded
            }]
        );
        assert!(matches!(
            asked.filters.allow[1],
            Filter::Verdict {
                verdict: Verdict::Dropped
            }
        ));
        let (args, raw) = parse(&[
            "--not",
            "-n",
            "kube-system",
            "-l",
            "app=x-wing",
            "--not",
            "--to-port=53",
        ]);
        let asked = request(&args, &negated_filters(&raw)).unwrap();
        assert_eq!(asked.filters.deny.len(), 2);
        assert!(
            matches!(&asked.filters.deny[0], Filter::Namespace { namespace, .. } if namespace == "kube-system")
        );
        assert!(matches!(
            asked.filters.deny[1],
            Filter::Port {
                end: End::Destination,
                port: 53
            }
        ));
        assert!(matches!(
            asked.filters.allow[0],
            Filter::Label {
                end: End::Either,
                ..
            }
        ));
    }

    #[test]
    fn last_defaults_as_hubble() {
        let last = |line: &[&str]| {
            let (args, raw) = parse(line);
            request(&args, &negated_filters(&raw)).unwrap().last
        };
        assert_eq!(last(&[]), Some(20));
        assert_eq!(last(&["-f"]), Some(0), "following starts now");
        assert_eq!(last(&["-f", "--last", "5"]), Some(5));
        assert_eq!(last(&["--all"]), None);
        assert_eq!(last(&["--since", "5m"]), None, "the whole window");
    }

    #[test]
    fn values_as_hubble_takes_them() {
        let (args, _) = parse(&[
            "--verdict",
            "dropped",
            "--protocol",
            "TCP",
            "--ip",
            "10.0.0.1",
            "--to-ip",
            "10.1.0.0/16",
            "--identity",
            "world",
            "--since",
            "2025-01-31T12:00:00Z",
        ]);
        assert_eq!(args.filter.verdict, [Verdict::Dropped]);
        assert_eq!(args.filter.protocol, [FilterProtocol::Tcp]);
        assert_eq!(args.filter.ip[0].prefix_len, 32);
        assert_eq!(args.filter.to_ip[0].to_string(), "10.1.0.0/16");
        assert_eq!(args.filter.identity, [2]);
        assert_eq!(args.since.unwrap().to_string(), "2025-01-31T12:00:00.000Z");
        for bad in [
            &["--verdict", "maybe"][..],
            &["--ip", "10.0.0.300"],
            &["--identity", "nobody"],
            &["--since", "the other day"],
            &["--label", "app in x"],
            &["--pod", "a/b/c"],
        ] {
            let raw: Vec<&str> = std::iter::once("observe")
                .chain(bad.iter().copied())
                .collect();
            assert!(Harness::try_parse_from(raw).is_err(), "{bad:?}");
        }
    }
}
