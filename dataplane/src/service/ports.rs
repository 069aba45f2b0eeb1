//! The ports any service's frontend or backend uses, as a bitset of all 65536: worker steering
//! ([`crate::steering`]) asks it first, so that a frame's client end (an ephemeral port, almost
//! never a service's) costs no map lookup. A bit once set stays set while the table lives: a stale
//! one only costs a lookup that finds nothing, and clearing would need a count per port.

use std::sync::Arc;

const WORDS: usize = 65536 / 64;

#[derive(Clone, Debug)]
pub(super) struct ServicePorts(Arc<[u64; WORDS]>);

impl Default for ServicePorts {
    fn default() -> Self {
        ServicePorts(Arc::new([0; WORDS]))
    }
}

impl ServicePorts {
    pub fn contains(&self, port: u16) -> bool {
        let (word, bit) = (usize::from(port) / 64, port % 64);
        self.0.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    pub fn insert_all(&mut self, ports: impl Iterator<Item = u16>) {
        let new: Vec<u16> = ports.filter(|&p| !self.contains(p)).collect();
        if new.is_empty() {
            return;
        }
        let words = Arc::make_mut(&mut self.0);
        for port in new {
            if let Some(w) = words.get_mut(usize::from(port) / 64) {
                *w |= 1 << (port % 64);
            }
        }
    }
}
