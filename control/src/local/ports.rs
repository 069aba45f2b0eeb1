//! Port rules of both policy kinds → the dataplane's [`PortRule`].

use meshpath_dataplane::policy::{PortRule, Protocol};

use super::error::{Subject, TranslateError};

/// `TCP`, `UDP` or (Cilium) `ANY`; absent means TCP for NetworkPolicy and ANY for Cilium, so the
/// caller passes the default.
pub(crate) fn protocol(
    name: Option<&str>,
    default: Protocol,
    subject: &Subject,
    field: &str,
) -> Result<Protocol, TranslateError> {
    match name {
        None => Ok(default),
        Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("ANY") => Ok(Protocol::Any),
        Some(other) => Err(subject.error(
            format!("{field}.protocol"),
            format!("protocol `{other}` is not supported (TCP, UDP, ANY)"),
        )),
    }
}

/// A numeric port with an optional range end. Port 0 means all ports, as in both APIs.
pub(crate) fn port_rule(
    protocol: Protocol,
    port: i64,
    end_port: Option<i64>,
    subject: &Subject,
    field: &str,
) -> Result<PortRule, TranslateError> {
    let in_range = |p: i64| u16::try_from(p).ok();
    let port_u16 = in_range(port).ok_or_else(|| {
        subject.error(format!("{field}.port"), format!("port {port} out of range"))
    })?;
    let end_port = match end_port {
        None => None,
        Some(end) => Some(in_range(end).filter(|&e| e >= port_u16).ok_or_else(|| {
            subject.error(
                format!("{field}.endPort"),
                format!("endPort {end} is out of range or below port {port}"),
            )
        })?),
    };
    Ok(PortRule {
        protocol,
        port: port_u16,
        end_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SUBJECT: Subject = Subject {
        kind: "NetworkPolicy",
        namespace: Some("default"),
        name: "p",
    };

    #[test]
    fn protocols() {
        let p = |n| protocol(n, Protocol::Tcp, &SUBJECT, "ports[0]");
        assert_eq!(p(None).unwrap(), Protocol::Tcp);
        assert_eq!(p(Some("UDP")).unwrap(), Protocol::Udp);
        assert_eq!(p(Some("ANY")).unwrap(), Protocol::Any);
        let err = p(Some("SCTP")).unwrap_err();
        assert_eq!(err.field, "ports[0].protocol");
    }

    proptest! {
        #[test]
        fn port_rule_accepts_exactly_valid_ranges(port in -2i64..70_000, end in proptest::option::of(-2i64..70_000)) {
            let rule = port_rule(Protocol::Tcp, port, end, &SUBJECT, "ports[0]");
            let valid = (0..=65_535).contains(&port)
                && end.is_none_or(|e| (port..=65_535).contains(&e));
            prop_assert_eq!(rule.is_ok(), valid);
            if let Ok(rule) = rule {
                prop_assert!(rule.range().is_some());
                prop_assert_eq!(i64::from(rule.port), port);
            }
        }
    }
}
