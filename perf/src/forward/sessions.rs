//! WireGuard for the encrypted runs: every remote node of the testbed publishes a key, and the
//! forwarder's worker starts with a session to each, handshaken here in-process with a stand-in peer
//! per node (the sink never answers a handshake), so that what is measured is the steady state —
//! every frame encrypted on an established session — not handshakes.

use anyhow::{bail, Context};
use meshpath_dataplane::frame::HEADROOM;
use meshpath_dataplane::parse::parse;
use meshpath_dataplane::pipeline::{originate, WorkerState};
use meshpath_dataplane::snapshot::Tables;
use meshpath_dataplane::testbed::{self, Testbed};
use meshpath_dataplane::wireguard::{EncryptionMode, Ends, PublicKey, Received, Tunnels};
use meshpath_dataplane::{Addr, Frame};

const NODE_KEY: [u8; 32] = [0x4e; 32];
const PEER_KEY: [u8; 32] = [0x50; 32];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 2, 2, 2];

/// The testbed's tables under strict encryption, every remote node keyed.
pub fn encrypted_tables(testbed: &Testbed) -> Tables {
    let mut tables = testbed.tables.clone();
    tables.node.encryption = EncryptionMode::Strict;
    let key = public(PEER_KEY);
    for addr in remote_nodes(testbed) {
        if let Some(mut node) = tables.nodes.get(addr).copied() {
            node.wireguard_key = Some(key);
            let _ = tables.nodes.upsert(node);
        }
    }
    tables
}

/// Gives `state` this node's key and a session with every remote node of `tables`.
pub fn establish(
    tables: &Tables,
    testbed: &Testbed,
    state: &mut WorkerState,
) -> anyhow::Result<()> {
    state.wireguard = Tunnels::new(NODE_KEY);
    for node in remote_nodes(testbed) {
        handshake(tables, state, node)
            .with_context(|| format!("a session with {:?}", node.ip()))?;
    }
    // The packets the handshakes started with: not part of the measurement.
    originate(state, |_, _| {});
    Ok(())
}

fn remote_nodes(testbed: &Testbed) -> Vec<Addr> {
    let mut nodes: Vec<Addr> = (0..testbed.scale.remote_endpoints)
        .map(|j| testbed::remote_node(j).into())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

fn public(private: [u8; 32]) -> PublicKey {
    Tunnels::new(private)
        .public_key()
        .unwrap_or(PublicKey([0; 32]))
}

/// The worker initiates (its first packet to `node`), the stand-in peer answers, the worker takes
/// the answer: the worker's session with `node` is up.
fn handshake(tables: &Tables, state: &mut WorkerState, node: Addr) -> anyhow::Result<()> {
    let mut peer = Tunnels::new(PEER_KEY);
    let own: Addr = testbed::node_ip().into();
    let to_peer = Ends {
        src_mac: testbed::NODE_MAC,
        dst_mac: PEER_MAC,
        src: own,
        dst: node,
    };
    let mut buf = vec![0u8; HEADROOM + 2048];
    // A minimal IPv4 header: the packet the handshake holds.
    let packet = [
        0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    buf[HEADROOM + 14..HEADROOM + 34].copy_from_slice(&packet);
    let mut frame = Frame::new(&mut buf, HEADROOM, 34, testbed::UPLINK).context("a frame")?;
    state
        .wireguard
        .encrypt(&mut frame, &to_peer, public(PEER_KEY))
        .map_err(|r| anyhow::anyhow!("initiation: {r}"))?;
    let initiation = frame.data().to_vec();
    let response = answer(tables, &mut peer, &initiation, public(NODE_KEY))?;
    let mut buf = vec![0u8; HEADROOM + 2048];
    buf[HEADROOM..HEADROOM + response.len()].copy_from_slice(&response);
    let mut frame =
        Frame::new(&mut buf, HEADROOM, response.len(), testbed::UPLINK).context("a frame")?;
    let outer = parse(frame.data()).map_err(|r| anyhow::anyhow!("response: {r}"))?;
    match state
        .wireguard
        .receive(tables, &mut frame, &outer, public(PEER_KEY))
    {
        Ok(Received::Reply) => Ok(()),
        other => bail!("the response gave {other:?}"),
    }
}

/// The stand-in peer's answer to a datagram the worker sent it, with the addresses swapped.
fn answer(
    tables: &Tables,
    peer: &mut Tunnels,
    datagram: &[u8],
    key: PublicKey,
) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADROOM + 2048];
    buf[HEADROOM..HEADROOM + datagram.len()].copy_from_slice(datagram);
    let mut frame =
        Frame::new(&mut buf, HEADROOM, datagram.len(), testbed::UPLINK).context("a frame")?;
    let mut outer = parse(frame.data()).map_err(|r| anyhow::anyhow!("initiation: {r}"))?;
    // The peer sees the datagram addressed to itself: its own address is the destination.
    outer.eth_src = testbed::NODE_MAC;
    match peer.receive(tables, &mut frame, &outer, key) {
        Ok(Received::Reply) => Ok(frame.data().to_vec()),
        other => bail!("the initiation gave {other:?}"),
    }
}
