//! Transparent encryption between nodes: the `Encryption:` line of `meshpath status` in the shape of
//! `cilium status`' (`Wireguard [strict, Pubkey: …, Port: 51871, Peers: 3]`) and its peers, each with
//! the age of its session's handshake.

use serde::{Deserialize, Serialize};

use crate::text::Table;

/// Cilium's WireGuard port.
pub const WIREGUARD_PORT: u16 = 51871;

named_enum! {
    pub enum EncryptionMode ("encryption mode") {
        /// Everything travels as routing sends it.
        Off => "off",
        /// Encrypted to every node that publishes a key, plain to the others.
        On => "on",
        /// Never in clear between nodes.
        Strict => "strict",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionStatus {
    pub mode: EncryptionMode,
    /// This node's WireGuard public key (base64), as its node record publishes it.
    pub public_key: Option<String>,
    /// Each node the worker has a WireGuard peer for, by address.
    pub peers: Vec<WireguardPeer>,
    /// Packets encrypted and decrypted, handshakes this node began, packets held for one.
    pub encrypted: u64,
    pub decrypted: u64,
    pub handshakes_initiated: u64,
    pub held: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardPeer {
    /// The node's underlay address.
    pub address: String,
    pub public_key: String,
    /// Seconds since its current session's handshake; `null` while it has none.
    pub last_handshake_seconds: Option<u64>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

impl EncryptionStatus {
    /// The peers with a session.
    pub fn established(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| p.last_handshake_seconds.is_some())
            .count()
    }
}

/// The `Encryption:` line.
pub fn line(status: &EncryptionStatus) -> String {
    if status.mode == EncryptionMode::Off {
        return "Disabled".to_owned();
    }
    format!(
        "Wireguard [{}, Pubkey: {}, Port: {WIREGUARD_PORT}, Peers: {} ({} with a session)]",
        status.mode,
        status.public_key.as_deref().unwrap_or("none"),
        status.peers.len(),
        status.established()
    )
}

/// The peers as a table.
pub fn peers_table(peers: &[WireguardPeer]) -> String {
    let mut table = Table::new([
        "PEER",
        "PUBLIC KEY",
        "LAST HANDSHAKE",
        "TX BYTES",
        "RX BYTES",
    ]);
    for p in peers {
        table.row([
            p.address.clone(),
            p.public_key.clone(),
            p.last_handshake_seconds
                .map_or("never".to_owned(), |s| format!("{s}s ago")),
            p.tx_bytes.to_string(),
            p.rx_bytes.to_string(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(mode: EncryptionMode) -> EncryptionStatus {
        EncryptionStatus {
            mode,
            public_key: Some("x".repeat(43) + "="),
            peers: vec![
                WireguardPeer {
                    address: "198.18.1.2".into(),
                    public_key: "a".repeat(43) + "=",
                    last_handshake_seconds: Some(12),
                    tx_bytes: 1000,
                    rx_bytes: 2000,
                },
                WireguardPeer {
                    address: "198.18.2.1".into(),
                    public_key: "b".repeat(43) + "=",
                    last_handshake_seconds: None,
                    tx_bytes: 0,
                    rx_bytes: 0,
                },
            ],
            encrypted: 3,
            decrypted: 4,
            handshakes_initiated: 1,
            held: 1,
        }
    }

    #[test]
    fn the_line_reads_like_cilium_status() {
        let line = line(&status(EncryptionMode::Strict));
        assert!(line.starts_with("Wireguard [strict, Pubkey: xxx"), "{line}");
        assert!(
            line.ends_with("Port: 51871, Peers: 2 (1 with a session)]"),
            "{line}"
        );
        assert_eq!(super::line(&status(EncryptionMode::Off)), "Disabled");
    }

    #[test]
    fn the_table_shows_each_peers_handshake_age() {
        let table = peers_table(&status(EncryptionMode::On).peers);
        assert!(table.contains("12s ago"), "{table}");
        assert!(table.contains("never"), "{table}");
    }

    #[test]
    fn serialised_with_the_mode_by_name() {
        let json = serde_json::to_value(status(EncryptionMode::Strict)).unwrap();
        assert_eq!(json["mode"], "strict");
        assert_eq!(json["peers"][0]["last_handshake_seconds"], 12);
        let back: EncryptionStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status(EncryptionMode::Strict));
    }
}
