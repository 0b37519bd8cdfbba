//! The `--peers` list: `1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003`, the brokers
//! that form the cluster and vote for its controller.
//!
//! Parsed and checked at start, before anything is opened: every entry is `ID=HOST:PORT`
//! with a positive id, no id or address twice, our own id among them with our own listen
//! port, and 1, 3 or 5 voters (an even count adds no fault tolerance and invites split
//! votes). Every error names the entry at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::metadata::NodeId;

/// Voter counts a cluster may have.
pub const VOTERS_ALLOWED: [usize; 3] = [1, 3, 5];

/// The cluster's brokers by id, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    addresses: BTreeMap<NodeId, SocketAddr>,
}

impl Peers {
    /// Parses `ID=HOST:PORT,...` and checks it against this broker's id and listen address.
    pub fn parse(text: &str, own_id: NodeId, own_listen: SocketAddr) -> Result<Peers, String> {
        let mut addresses = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, address) = entry
                .split_once('=')
                .ok_or_else(|| format!("peer '{entry}' is not ID=HOST:PORT"))?;
            let id: u32 = id
                .trim()
                .parse()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| format!("peer '{entry}': the id must be a positive integer"))?;
            let address: SocketAddr = address.trim().parse().map_err(|_| {
                format!("peer '{entry}': '{address}' is not an IP address and port")
            })?;
            if address.port() == 0 {
                return Err(format!("peer '{entry}': port 0 cannot be reached"));
            }
            if addresses.values().any(|a| *a == address) {
                return Err(format!("peer '{entry}': address {address} is named twice"));
            }
            if addresses.insert(NodeId(id), address).is_some() {
                return Err(format!("peer '{entry}': node id {id} is named twice"));
            }
        }
        if !VOTERS_ALLOWED.contains(&addresses.len()) {
            return Err(format!(
                "--peers names {} brokers; a cluster has 1, 3 or 5",
                addresses.len()
            ));
        }
        let own = addresses
            .get(&own_id)
            .ok_or_else(|| format!("--peers does not name this broker's --node-id {own_id}"))?;
        if own.port() != own_listen.port() {
            return Err(format!(
                "--peers gives node {own_id} the address {own}, but it listens on {own_listen}"
            ));
        }
        Ok(Peers { addresses })
    }

    /// A cluster of one: this broker alone.
    pub fn alone(own_id: NodeId, own_listen: SocketAddr) -> Peers {
        Peers {
            addresses: BTreeMap::from([(own_id, own_listen)]),
        }
    }

    pub fn address(&self, node: NodeId) -> Option<SocketAddr> {
        self.addresses.get(&node).copied()
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.addresses.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const THREE: &str = "1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003";

    #[test]
    fn three_peers_parse_in_id_order() {
        let peers = Peers::parse(
            " 3=127.0.0.1:9003, 1=127.0.0.1:9001,2=127.0.0.1:9002 ",
            NodeId(2),
            listen(9002),
        )
        .unwrap();
        assert_eq!(
            peers.ids().collect::<Vec<_>>(),
            vec![NodeId(1), NodeId(2), NodeId(3)]
        );
        assert_eq!(peers.address(NodeId(3)), Some(listen(9003)));
        assert_eq!(Peers::alone(NodeId(1), listen(80)).len(), 1);
    }

    #[test]
    fn each_bad_list_is_refused_naming_its_fault() {
        let cases = [
            (
                "1=127.0.0.1:9001,2=127.0.0.1:9002,4=127.0.0.1:9004",
                3,
                "does not name this broker's --node-id 3",
            ),
            (
                "1=127.0.0.1:9001,1=127.0.0.1:9002,3=127.0.0.1:9003",
                1,
                "node id 1 is named twice",
            ),
            (
                "1=127.0.0.1:9001,2=127.0.0.1:9001,3=127.0.0.1:9003",
                1,
                "address 127.0.0.1:9001 is named twice",
            ),
            (
                "1=localhost:9001",
                1,
                "'localhost:9001' is not an IP address and port",
            ),
            ("1:127.0.0.1:9001", 1, "is not ID=HOST:PORT"),
            ("0=127.0.0.1:9001", 1, "positive integer"),
            ("x=127.0.0.1:9001", 1, "positive integer"),
            ("1=127.0.0.1:0", 1, "port 0"),
            ("1=127.0.0.1:9001,2=127.0.0.1:9002", 1, "names 2 brokers"),
            ("", 1, "names 0 brokers"),
            (THREE, 1, "listens on 127.0.0.1:9999"),
        ];
        for (text, own, expected) in cases {
            let own_listen = if expected.contains("listens on") {
                listen(9999)
            } else {
                listen(9000 + own as u16)
            };
            let e = Peers::parse(text, NodeId(own), own_listen).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}
