//! A private network of network namespaces for the partition suite
//! (tests/partitions.rs): a bridge in the test's own namespace carrying the
//! services' addresses (Redis, Kafka bind to them), and one namespace per
//! `danmaku` process, joined to the bridge by a veth pair. The test reaches
//! every process through the bridge, as a load balancer would.
//!
//! A cut is an nftables table in one process's namespace that drops packets
//! both ways (to some addresses, or to everything but loopback): connections
//! hang, as across a real partition, instead of being refused, which is what
//! exercises the timeouts. A heal deletes the table; the connections that
//! were open resume. Everything is removed when the [`Net`] is dropped, also
//! when the test panics. Needs root, `ip` (iproute2) and `nft` (nftables).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::procs::{have_program, services_required, Placement};

/// The /16 the test networks take a /24 of. Nothing routes it off the
/// machine: each namespace knows only its /24, and [`Net::create`] checks
/// that the test's namespace routes it to the bridge before any traffic.
const FIRST_OCTETS: (u8, u8) = (10, 231);
/// The nftables table a cut adds (and a heal deletes).
const CUT_TABLE: &str = "danmaku_cut";

/// `Some(())` when this process is root and `ip` and `nft` are there;
/// otherwise skips (prints why) or, with `DANMAKU_REQUIRE_SERVICES=1`, fails.
pub fn require_netns() -> Option<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut missing = Vec::new();
    if uid != "0" {
        missing.push("root (network namespaces)".to_string());
    }
    for p in ["ip", "nft"] {
        if !have_program(p) {
            missing.push(format!("{p} on PATH"));
        }
    }
    if missing.is_empty() {
        return Some(());
    }
    assert!(
        !services_required(),
        "DANMAKU_REQUIRE_SERVICES=1 but the partition suite lacks {missing:?} \
         (run as root; scripts/test.sh installs nftables)"
    );
    eprintln!("skipping: the partition suite lacks {missing:?}");
    None
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> String {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args), None)
}

/// What a cut drops.
#[derive(Clone, Debug)]
pub enum Cut {
    /// Packets to and from these addresses.
    From(Vec<Ipv4Addr>),
    /// Every packet that is not on loopback.
    Everything,
}

impl Cut {
    /// The nftables rule set of the cut.
    fn rules(&self) -> String {
        let (out, input) = match self {
            Cut::From(addrs) => {
                let set = addrs
                    .iter()
                    .map(Ipv4Addr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    format!("ip daddr {{ {set} }} drop"),
                    format!("ip saddr {{ {set} }} drop"),
                )
            }
            Cut::Everything => (
                "oifname != \"lo\" drop".to_string(),
                "iifname != \"lo\" drop".to_string(),
            ),
        };
        format!(
            "table inet {CUT_TABLE} {{\n\
             chain out {{ type filter hook output priority 0; policy accept; {out}; }}\n\
             chain in {{ type filter hook input priority 0; policy accept; {input}; }}\n\
             }}\n"
        )
    }
}

/// The bridge, its addresses and the namespaces joined to it.
pub struct Net {
    /// Prefix of every name made here (unique per test process).
    tag: String,
    bridge: String,
    third_octet: u8,
    /// Namespaces made, in order (host `k` is `.10 + k`).
    namespaces: Vec<String>,
}

impl Net {
    /// A bridge on a /24 of 10.231.0.0/16 that no address here uses yet,
    /// with the test's side at `.1`.
    pub fn create() -> Net {
        let used = ip(&["-4", "-o", "addr", "show"]);
        let third_octet = (20u8..=220)
            .find(|n| !used.contains(&format!(" {}.{}.{n}.", FIRST_OCTETS.0, FIRST_OCTETS.1)))
            .expect("a free /24 in 10.231.0.0/16");
        let tag = format!("dmk{}", std::process::id() % 1_000_000);
        let net = Net {
            bridge: format!("{tag}br"),
            tag,
            third_octet,
            namespaces: Vec::new(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&["link", "set", &net.bridge, "up"]);
        net.add_address(net.addr(1));
        // Traffic to the test network stays on the bridge, or no traffic.
        let route = ip(&["route", "get", &net.addr(10).to_string()]);
        assert!(
            route.contains(&format!("dev {} ", net.bridge)),
            "the test network is not routed to its bridge: {route}"
        );
        net
    }

    /// `10.231.N.host`.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(FIRST_OCTETS.0, FIRST_OCTETS.1, self.third_octet, host)
    }

    /// Another address of the test's own namespace, on the bridge (for a
    /// service to bind to, so a cut can single it out): `.2`, `.3`, …
    pub fn service_addr(&self, k: u8) -> Ipv4Addr {
        assert!((2..10).contains(&k), "service addresses are .2 to .9");
        let a = self.addr(k);
        self.add_address(a);
        a
    }

    fn add_address(&self, a: Ipv4Addr) {
        ip(&["addr", "add", &format!("{a}/24"), "dev", &self.bridge]);
    }

    /// A new namespace joined to the bridge; where a node runs in it.
    pub fn host(&mut self) -> Placement {
        let k = self.namespaces.len();
        let ns = format!("{}n{k}", self.tag);
        let (outer, inner) = (format!("{}v{k}", self.tag), format!("{}p{k}", self.tag));
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ]);
        ip(&["link", "set", &outer, "master", &self.bridge, "up"]);
        let addr = self.addr(10 + k as u8);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ]);
        ip(&["-n", &ns, "link", "set", &inner, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        Placement {
            netns: ns,
            ip: addr,
        }
    }

    /// Drops `cut`'s packets in `at`'s namespace (until [`Net::heal`]).
    pub fn cut(&self, at: &Placement, cut: &Cut) {
        run(
            Command::new("ip").args(["netns", "exec", &at.netns, "nft", "-f", "-"]),
            Some(&cut.rules()),
        );
    }

    /// Lifts the cut in `at`'s namespace.
    pub fn heal(&self, at: &Placement) {
        run(
            Command::new("ip").args([
                "netns", "exec", &at.netns, "nft", "delete", "table", "inet", CUT_TABLE,
            ]),
            None,
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Best effort, quietly: a namespace goes with its last process, a
        // veth pair with either end, the bridge's addresses with it.
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for (k, ns) in self.namespaces.iter().enumerate() {
            quiet(&["link", "del", &format!("{}v{k}", self.tag)]);
            quiet(&["netns", "del", ns]);
        }
        quiet(&["link", "del", &self.bridge]);
    }
}
