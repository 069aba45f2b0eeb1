//! Pod addresses from the node's pod CIDRs, host-local style: one file per address handed out,
//! `<data-dir>/<network>/<address>`, naming the container id and interface that hold it, under an
//! exclusive lock (`flock`) around each allocation and release.
//!
//! A claim is a complete file linked into place (`link(2)` fails if the address is taken), so an
//! address is never handed out twice and a crash leaves a whole claim or none. A repeated ADD of the
//! same container interface gets the addresses it already holds; DEL releases every one it holds.
//! The CIDR's first address is the network's, the next the pods' gateway (whose ARP and neighbour
//! solicitations the dataplane answers): neither is handed out, nor IPv4's broadcast address.
//!
//! A runtime may ask for specific addresses, as host-local lets it (`IP=` in `CNI_ARGS`,
//! `runtimeConfig.ips`): each must lie inside one of the node's pod CIDRs, among the addresses handed
//! out, one per CIDR, and be free or already the container interface's own; otherwise nothing changes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use meshpath_api::cni::ContainerRef;
use meshpath_api::node::Cidr;

/// Most addresses of one CIDR scanned for a free one: an IPv6 /64 is not walked whole.
const MAX_SCAN: u128 = 1 << 16;

/// The addresses of one network.
pub struct Ipam {
    dir: PathBuf,
}

/// Why no address was handed out.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{0}: {1}")]
    Io(String, #[source] io::Error),
    #[error("no free address left in {0}")]
    Full(Cidr),
    #[error("{0} has no room for pods (the network's and the gateway's addresses take it all)")]
    TooSmall(Cidr),
    #[error("the requested address {ip} is outside the node's pod CIDRs {cidrs:?}")]
    Outside { ip: IpAddr, cidrs: Vec<Cidr> },
    #[error("the requested address {ip} is {cidr}'s network, gateway or broadcast address")]
    Reserved { ip: IpAddr, cidr: Cidr },
    #[error("the requested addresses {0} and {1} are both of {2}: a pod has one address per CIDR")]
    TwoInOneCidr(IpAddr, IpAddr, Cidr),
    #[error("the requested address {ip} is held by container `{holder}`")]
    Taken { ip: IpAddr, holder: String },
}

/// The lock, held until dropped.
struct Lock(#[allow(dead_code)] File);

impl Ipam {
    pub fn new(data_dir: &Path, network: &str) -> Ipam {
        Ipam {
            dir: data_dir.join(network),
        }
    }

    fn io(&self, what: &str) -> impl Fn(io::Error) -> IpamError + '_ {
        let what = format!("{what} in {}", self.dir.display());
        move |e| IpamError::Io(what.clone(), e)
    }

    fn lock(&self) -> Result<Lock, IpamError> {
        fs::create_dir_all(&self.dir).map_err(self.io("creating the address directory"))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))
            .map_err(self.io("opening the lock"))?;
        // SAFETY: flock on a descriptor this function owns; blocks until the lock is free.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io("taking the lock")(io::Error::last_os_error()));
        }
        Ok(Lock(file))
    }

    /// One address of each CIDR for `owner`: the one `requested` of that CIDR, else the one it already
    /// holds, else a free one. Addresses it holds that are no longer wanted (outside every CIDR — the
    /// node's CIDR changed — or not the one requested of their CIDR) are released. A request that
    /// cannot be met changes nothing.
    pub fn allocate(
        &self,
        owner: &ContainerRef,
        cidrs: &[Cidr],
        requested: &[IpAddr],
    ) -> Result<Vec<(IpAddr, Cidr)>, IpamError> {
        let wanted = requests(cidrs, requested)?;
        let _lock = self.lock()?;
        let held = self.held_by(owner)?;
        for (ip, _) in &wanted {
            if !held.contains(ip) {
                if let Some(holder) = self.holder(*ip) {
                    return Err(IpamError::Taken { ip: *ip, holder });
                }
            }
        }
        let requested_of = |cidr: &Cidr| wanted.iter().find(|(_, c)| c == cidr).map(|(ip, _)| *ip);
        let unwanted = |ip: &IpAddr| match cidrs.iter().find(|c| contains(c, *ip)) {
            None => true,
            Some(cidr) => requested_of(cidr).is_some_and(|r| r != *ip),
        };
        for stale in held.iter().filter(|ip| unwanted(ip)) {
            self.unclaim(*stale)?;
        }
        let mut out = Vec::new();
        for cidr in cidrs {
            let ip = match (
                requested_of(cidr),
                held.iter().find(|ip| contains(cidr, **ip)),
            ) {
                (Some(ip), _) => self.claim_requested(owner, ip)?,
                (None, Some(ip)) => *ip,
                (None, None) => self.claim_free(owner, cidr)?,
            };
            out.push((ip, *cidr));
        }
        Ok(out)
    }

    /// Claims `ip` for `owner` unless it holds it already.
    fn claim_requested(&self, owner: &ContainerRef, ip: IpAddr) -> Result<IpAddr, IpamError> {
        if fs::read_to_string(self.dir.join(ip.to_string())).is_ok_and(|t| t == owner_text(owner)) {
            return Ok(ip);
        }
        if self.claim(owner, ip)? {
            Ok(ip)
        } else {
            let holder = self.holder(ip).unwrap_or_default();
            Err(IpamError::Taken { ip, holder })
        }
    }

    /// The container that holds `ip`, if anyone does.
    fn holder(&self, ip: IpAddr) -> Option<String> {
        let text = fs::read_to_string(self.dir.join(ip.to_string())).ok()?;
        Some(text.lines().next().unwrap_or_default().to_owned())
    }

    /// Releases every address `owner` holds; none held is no error.
    pub fn release(&self, owner: &ContainerRef) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        let held = self.held_by(owner)?;
        for ip in &held {
            self.unclaim(*ip)?;
        }
        Ok(held)
    }

    /// The addresses `owner` holds.
    pub fn held_by(&self, owner: &ContainerRef) -> Result<Vec<IpAddr>, IpamError> {
        let entries = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(self.io("listing addresses"))?,
        };
        let mine = owner_text(owner);
        let mut held = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            if fs::read_to_string(entry.path()).is_ok_and(|text| text == mine) {
                held.push(ip);
            }
        }
        held.sort();
        Ok(held)
    }

    /// Every address handed out, whoever holds it.
    #[cfg(test)]
    pub fn claimed(&self) -> Vec<IpAddr> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<IpAddr> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        out.sort();
        out
    }

    fn claim_free(&self, owner: &ContainerRef, cidr: &Cidr) -> Result<IpAddr, IpamError> {
        let (first, count) = range(cidr).ok_or(IpamError::TooSmall(*cidr))?;
        let last_file = self.dir.join(format!("last_reserved_ip.{}", family(cidr)));
        let start = fs::read_to_string(&last_file)
            .ok()
            .and_then(|t| t.trim().parse::<IpAddr>().ok())
            .filter(|ip| contains(cidr, *ip))
            .map(|ip| (offset(cidr, ip).saturating_sub(first) + 1) % count)
            .unwrap_or(0);
        for i in 0..count {
            let ip = nth(cidr, first + (start + i) % count);
            if self.claim(owner, ip)? {
                fs::write(&last_file, ip.to_string())
                    .map_err(self.io("recording the last address"))?;
                return Ok(ip);
            }
        }
        Err(IpamError::Full(*cidr))
    }

    /// Claims `ip` for `owner` whole, or not at all when it is taken.
    fn claim(&self, owner: &ContainerRef, ip: IpAddr) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        if path.exists() {
            return Ok(false);
        }
        let tmp = self.dir.join(format!("claim.{}.tmp", std::process::id()));
        fs::write(&tmp, owner_text(owner)).map_err(self.io("writing a claim"))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.io("claiming an address")(e)),
        }
    }

    fn unclaim(&self, ip: IpAddr) -> Result<(), IpamError> {
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(self.io("releasing an address")(e))
            }
            _ => Ok(()),
        }
    }
}

/// Each requested address with the CIDR it belongs to, checked against the CIDRs alone: inside one,
/// among the addresses handed out, at most one per CIDR (a repeated address counts once).
fn requests(cidrs: &[Cidr], requested: &[IpAddr]) -> Result<Vec<(IpAddr, Cidr)>, IpamError> {
    let mut wanted: Vec<(IpAddr, Cidr)> = Vec::new();
    for ip in requested {
        let cidr = *cidrs
            .iter()
            .find(|c| contains(c, *ip))
            .ok_or_else(|| IpamError::Outside {
                ip: *ip,
                cidrs: cidrs.to_vec(),
            })?;
        if !handed_out(&cidr, *ip) {
            return Err(IpamError::Reserved { ip: *ip, cidr });
        }
        match wanted.iter().find(|(_, c)| *c == cidr) {
            Some((other, _)) if other == ip => {}
            Some((other, _)) => return Err(IpamError::TwoInOneCidr(*other, *ip, cidr)),
            None => wanted.push((*ip, cidr)),
        }
    }
    Ok(wanted)
}

/// Whether `cidr` hands out `ip` (one of its own): not the network's address, the gateway's nor IPv4's
/// broadcast address.
fn handed_out(cidr: &Cidr, ip: IpAddr) -> bool {
    let at = offset(cidr, ip);
    let all = if cidr.address.is_ipv4() {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let broadcast = cidr.address.is_ipv4() && at == all & !mask(cidr);
    at >= 2 && !broadcast
}

fn owner_text(owner: &ContainerRef) -> String {
    format!("{}\n{}\n", owner.container_id, owner.ifname)
}

fn family(cidr: &Cidr) -> &'static str {
    if cidr.address.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

/// The pods' gateway of `cidr`: the address after the network's.
pub fn gateway(cidr: &Cidr) -> IpAddr {
    nth(cidr, 1)
}

/// The offset of the first address handed out, and how many are.
fn range(cidr: &Cidr) -> Option<(u128, u128)> {
    let bits = if cidr.address.is_ipv4() { 32 } else { 128 };
    let host_bits = bits - u32::from(cidr.prefix_len.min(bits as u8));
    let size = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    // Network and gateway first; IPv4's broadcast last.
    let reserved = if cidr.address.is_ipv4() { 3 } else { 2 };
    let count = size.checked_sub(reserved).filter(|c| *c > 0)?;
    Some((2, count.min(MAX_SCAN)))
}

fn nth(cidr: &Cidr, n: u128) -> IpAddr {
    match network(cidr) {
        IpAddr::V4(net) => IpAddr::V4(Ipv4Addr::from(u32::from(net).wrapping_add(n as u32))),
        IpAddr::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net).wrapping_add(n))),
    }
}

fn offset(cidr: &Cidr, ip: IpAddr) -> u128 {
    match (network(cidr), ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => u128::from(u32::from(ip) - u32::from(net)),
        (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) - u128::from(net),
        _ => 0,
    }
}

fn mask(cidr: &Cidr) -> u128 {
    let bits = if cidr.address.is_ipv4() { 32 } else { 128 };
    let len = u32::from(cidr.prefix_len.min(bits as u8));
    let all = if bits == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    all & !(all.checked_shr(len).unwrap_or(0))
}

fn network(cidr: &Cidr) -> IpAddr {
    match cidr.address {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask(cidr) as u32)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask(cidr))),
    }
}

/// Whether `cidr` holds `ip` (of its own family only).
pub fn contains(cidr: &Cidr, ip: IpAddr) -> bool {
    match (network(cidr), ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask(cidr) as u32 == u32::from(net),
        (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask(cidr) == u128::from(net),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn owner(id: &str) -> ContainerRef {
        ContainerRef {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_requested_address_is_given_kept_and_moved_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "meshpath");
        let cidrs = [cidr("100.64.1.0/24"), cidr("fd00:1::/64")];
        let got = ipam
            .allocate(&owner("a"), &cidrs, &[ip("100.64.1.10")])
            .unwrap();
        assert_eq!(got[0].0, ip("100.64.1.10"));
        assert_eq!(got[1].0, ip("fd00:1::2"), "the other family from the pool");
        let again = ipam
            .allocate(&owner("a"), &cidrs, &[ip("100.64.1.10")])
            .unwrap();
        assert_eq!(again, got, "a repeated ADD keeps what it asked for");
        let moved = ipam
            .allocate(&owner("a"), &cidrs, &[ip("100.64.1.11")])
            .unwrap();
        assert_eq!(moved[0].0, ip("100.64.1.11"));
        assert_eq!(
            ipam.held_by(&owner("a")).unwrap(),
            [ip("100.64.1.11"), ip("fd00:1::2")],
            "the address no longer asked for is released"
        );
        // Far beyond what a scan for a free address walks: still the runtime's to ask for.
        let far = ip("fd00:1::ffff:ffff:1");
        let v6 = ipam
            .allocate(&owner("b"), &cidrs, &[far, ip("100.64.1.12"), far])
            .unwrap();
        assert_eq!((v6[0].0, v6[1].0), (ip("100.64.1.12"), far));
    }

    #[test]
    fn a_request_outside_reserved_doubled_or_taken_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "meshpath");
        let cidrs = [cidr("100.64.1.0/24")];
        ipam.allocate(&owner("a"), &cidrs, &[ip("100.64.1.10")])
            .unwrap();
        ipam.allocate(&owner("b"), &cidrs, &[ip("100.64.1.20")])
            .unwrap();
        let refuse = |requested: &[&str]| {
            let requested: Vec<IpAddr> = requested.iter().map(|r| ip(r)).collect();
            ipam.allocate(&owner("b"), &cidrs, &requested).unwrap_err()
        };
        assert!(matches!(
            refuse(&["100.64.2.10"]),
            IpamError::Outside { .. }
        ));
        assert!(matches!(refuse(&["fd00::10"]), IpamError::Outside { .. }));
        for reserved in ["100.64.1.0", "100.64.1.1", "100.64.1.255"] {
            let error = refuse(&[reserved]);
            assert!(matches!(error, IpamError::Reserved { .. }), "{error}");
        }
        assert!(matches!(
            refuse(&["100.64.1.30", "100.64.1.31"]),
            IpamError::TwoInOneCidr(..)
        ));
        match refuse(&["100.64.1.10"]) {
            IpamError::Taken { ip: taken, holder } => {
                assert_eq!((taken, holder.as_str()), (ip("100.64.1.10"), "a"));
            }
            other => panic!("{other}"),
        }
        assert_eq!(ipam.held_by(&owner("a")).unwrap(), [ip("100.64.1.10")]);
        assert_eq!(
            ipam.held_by(&owner("b")).unwrap(),
            [ip("100.64.1.20")],
            "a refused request keeps what was held"
        );
        assert_eq!(ipam.claimed().len(), 2);
    }

    #[test]
    fn one_address_per_family_kept_across_a_repeated_add_and_released_on_del() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "meshpath");
        let cidrs = [cidr("100.64.1.0/24"), cidr("fd00:1::/64")];
        let a = ipam.allocate(&owner("a"), &cidrs, &[]).unwrap();
        let ips: Vec<String> = a.iter().map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(ips, ["100.64.1.2", "fd00:1::2"]);
        assert_eq!(
            ipam.allocate(&owner("a"), &cidrs, &[]).unwrap(),
            a,
            "a repeated ADD gets the same"
        );
        let b = ipam.allocate(&owner("b"), &cidrs, &[]).unwrap();
        assert_eq!(b[0].0.to_string(), "100.64.1.3");
        assert_eq!(ipam.release(&owner("a")).unwrap().len(), 2);
        assert!(
            ipam.release(&owner("a")).unwrap().is_empty(),
            "a second DEL finds nothing"
        );
        assert_eq!(ipam.claimed().len(), 2);
        let c = ipam.allocate(&owner("c"), &cidrs, &[]).unwrap();
        assert_eq!(
            c[0].0.to_string(),
            "100.64.1.4",
            "not straight back to a released address"
        );
        assert_eq!(gateway(&cidrs[0]).to_string(), "100.64.1.1");
        assert_eq!(gateway(&cidrs[1]).to_string(), "fd00:1::1");
    }

    #[test]
    fn a_full_cidr_is_named_and_a_changed_one_releases_the_old_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "meshpath");
        let small = [cidr("100.64.1.0/30")];
        assert_eq!(
            ipam.allocate(&owner("a"), &small, &[]).unwrap()[0]
                .0
                .to_string(),
            "100.64.1.2"
        );
        let full = ipam.allocate(&owner("b"), &small, &[]).unwrap_err();
        assert!(matches!(full, IpamError::Full(_)), "{full}");
        assert!(matches!(
            ipam.allocate(&owner("b"), &[cidr("100.64.1.0/31")], &[])
                .unwrap_err(),
            IpamError::TooSmall(_)
        ));
        let moved = ipam
            .allocate(&owner("a"), &[cidr("100.64.2.0/24")], &[])
            .unwrap();
        assert_eq!(moved[0].0.to_string(), "100.64.2.2");
        assert_eq!(ipam.held_by(&owner("a")).unwrap(), vec![moved[0].0]);
    }

    #[test]
    fn a_claim_left_half_done_is_never_a_second_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "meshpath");
        let cidrs = [cidr("100.64.1.0/24")];
        ipam.allocate(&owner("a"), &cidrs, &[]).unwrap();
        // A plugin killed between writing its claim and linking it: the temporary file claims nothing.
        fs::write(dir.path().join("meshpath/claim.1.tmp"), "b\neth0\n").unwrap();
        assert!(ipam.held_by(&owner("b")).unwrap().is_empty());
        let b = ipam.allocate(&owner("b"), &cidrs, &[]).unwrap();
        assert_eq!(b[0].0.to_string(), "100.64.1.3");
    }

    #[test]
    fn concurrent_plugins_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let cidrs = [cidr("100.64.1.0/24")];
        let handed: Vec<IpAddr> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|t| {
                    let path = dir.path();
                    s.spawn(move || {
                        let ipam = Ipam::new(path, "meshpath");
                        (0..20)
                            .map(|i| {
                                ipam.allocate(&owner(&format!("{t}-{i}")), &cidrs, &[])
                                    .unwrap()[0]
                                    .0
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let unique: BTreeSet<_> = handed.iter().collect();
        assert_eq!(unique.len(), 160);
    }

    proptest! {
        #[test]
        fn every_address_handed_out_is_inside_and_never_the_gateway(
            prefix in 20u8..=30, count in 1usize..40,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let ipam = Ipam::new(dir.path(), "meshpath");
            let c = Cidr { address: "10.8.0.0".parse().unwrap(), prefix_len: prefix };
            let room = (1usize << (32 - prefix)) - 3;
            for i in 0..count {
                match ipam.allocate(&owner(&i.to_string()), &[c], &[]) {
                    Ok(got) => {
                        let ip = got[0].0;
                        prop_assert!(contains(&c, ip));
                        prop_assert_ne!(ip, gateway(&c));
                        prop_assert_ne!(ip, network(&c));
                        prop_assert!(i < room);
                    }
                    Err(IpamError::Full(_)) => prop_assert!(i >= room),
                    Err(other) => prop_assert!(false, "{}", other),
                }
            }
        }

        #[test]
        fn a_requested_address_is_granted_exactly_or_refused_by_name(
            prefix in 20u8..=30, picks in proptest::collection::vec(any::<u32>(), 1..30),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let ipam = Ipam::new(dir.path(), "meshpath");
            let c = Cidr { address: "10.8.0.0".parse().unwrap(), prefix_len: prefix };
            let mut granted = BTreeSet::new();
            for (i, pick) in picks.iter().enumerate() {
                let at = u128::from(*pick) % (1u128 << (32 - prefix));
                let wanted = nth(&c, at);
                match ipam.allocate(&owner(&i.to_string()), &[c], &[wanted]) {
                    Ok(got) => {
                        prop_assert_eq!(got[0].0, wanted);
                        prop_assert!(granted.insert(wanted), "{} handed out twice", wanted);
                    }
                    Err(IpamError::Reserved { .. }) => prop_assert!(!handed_out(&c, wanted)),
                    Err(IpamError::Taken { .. }) => prop_assert!(granted.contains(&wanted)),
                    Err(other) => prop_assert!(false, "{}", other),
                }
            }
        }
    }
}
