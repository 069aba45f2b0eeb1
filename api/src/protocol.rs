//! The IP protocol of a flow, a service frontend or a port range, named as Cilium prints it.

use std::fmt;
use std::str::FromStr;

/// `TCP`, `UDP`, `ICMPv4`, `ICMPv6`, or any other by number (`proto-132`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmpv4,
    Icmpv6,
    Other(u8),
}

impl Protocol {
    /// The protocol of IP protocol number `number`.
    pub const fn from_number(number: u8) -> Protocol {
        match number {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmpv4,
            58 => Protocol::Icmpv6,
            n => Protocol::Other(n),
        }
    }

    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmpv4 => 1,
            Protocol::Icmpv6 => 58,
            Protocol::Other(n) => n,
        }
    }

    /// Whether its flows have ports.
    pub const fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Icmpv4 => f.write_str("ICMPv4"),
            Protocol::Icmpv6 => f.write_str("ICMPv6"),
            Protocol::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// A protocol name that is none of `TCP`, `UDP`, `ICMPv4`, `ICMPv6`, `proto-N`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol `{0}` (TCP, UDP, ICMPv4, ICMPv6 or proto-N)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let named = match text {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "ICMPv4" => Protocol::Icmpv4,
            "ICMPv6" => Protocol::Icmpv6,
            other => other
                .strip_prefix("proto-")
                .and_then(|digits| {
                    digits
                        .parse::<u8>()
                        .ok()
                        .filter(|n| n.to_string() == digits)
                })
                .map(Protocol::from_number)
                // One name per protocol: `proto-6` is `TCP`'s number, not a name of its own.
                .filter(|p| matches!(p, Protocol::Other(_)))
                .ok_or_else(|| UnknownProtocol(text.to_owned()))?,
        };
        Ok(named)
    }
}

serde_as_text!(Protocol);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_number_round_trips_through_its_name(number: u8) {
            let protocol = Protocol::from_number(number);
            prop_assert_eq!(protocol.number(), number);
            prop_assert_eq!(protocol.to_string().parse::<Protocol>(), Ok(protocol));
        }

        #[test]
        fn any_text_parses_or_fails_cleanly(text in "\\PC{0,12}") {
            if let Ok(protocol) = text.parse::<Protocol>() {
                prop_assert_eq!(protocol.to_string(), text);
            }
        }
    }

    #[test]
    fn names_as_cilium_prints_them() {
        assert_eq!(Protocol::from_number(6).to_string(), "TCP");
        assert_eq!(Protocol::from_number(58).to_string(), "ICMPv6");
        assert_eq!(Protocol::from_number(132).to_string(), "proto-132");
        assert!("tcp".parse::<Protocol>().is_err());
        assert!("proto-6x".parse::<Protocol>().is_err());
        assert!("proto-6".parse::<Protocol>().is_err());
        assert!("proto-+132".parse::<Protocol>().is_err());
    }
}
