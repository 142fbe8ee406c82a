//! Routing inside a pod's network namespace so the inbound side can connect to
//! the application from the client's real address.
//!
//! ztunnel connects to the app with `IP_TRANSPARENT`, bound to the remote
//! client's address, and marks its socket. The app's SYN-ACK to that remote
//! address would be routed out of the pod, and the connect would time out. Two
//! pieces bring it back to ztunnel, without iptables:
//! `net.ipv4.tcp_fwmark_accept=1` (the app's accepted socket, and its replies,
//! inherit the mark of the SYN; it covers IPv6 too), and a policy rule
//! `fwmark <mark> lookup <table>` whose table routes everything `local` via `lo`.

use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        route::{RouteScope, RouteType},
        rule::RuleAction,
    },
};

use super::{Error, Netns};

/// `EEXIST`, as netlink reports it (negated).
const NETLINK_EEXIST: i32 = -libc::EEXIST;
/// Priority of the policy rule: before the main table (32766).
const RULE_PRIORITY: u32 = 100;

/// Sets up the return path for transparent connects in `netns`: the sysctl
/// (written under `sysctl_net`, a view of `/proc/sys/net`, opened from inside
/// `netns`), the rules (IPv4 and IPv6) and the local routes of `table`.
/// Idempotent: a restarted ztunnel finds them in place.
pub async fn setup_transparent_return(
    netns: &Netns,
    sysctl_net: &Path,
    mark: u32,
    table: u32,
) -> Result<(), Error> {
    let route_error = |what| {
        move |source| Error::Route {
            path: netns.path().to_owned(),
            what,
            source,
        }
    };
    // tcp_fwmark_accept: the app's accepted socket, and its replies, carry
    // the mark of ztunnel's transparent SYN. fwmark_reflect: so do the
    // kernel's own answers (the RST of a closed port, ICMP errors), which
    // would otherwise leave the pod for the client's real address and leave
    // ztunnel's connect waiting for its timeout. Packets from outside carry
    // no mark, so nothing else changes. IPv6 may be off in a pod.
    // tcp_migrate_req (5.14+, TCP of both families): when a ztunnel that is
    // being replaced closes its listeners, the connections waiting in their
    // accept queues move to its successor's listener of the same
    // SO_REUSEPORT group instead of being reset.
    for (file, required) in [
        ("ipv4/tcp_fwmark_accept", true),
        ("ipv4/fwmark_reflect", true),
        ("ipv6/fwmark_reflect", false),
        ("ipv4/tcp_migrate_req", false),
    ] {
        let sysctl = sysctl_net.join(file);
        match netns.run(|| fs::write(&sysctl, "1"))? {
            Ok(()) => {}
            Err(e) if !required && e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Sysctl {
                    netns: netns.path().to_owned(),
                    file: sysctl,
                    source,
                });
            }
        }
    }
    // The netlink socket belongs to the namespace it is created in.
    let (connection, handle, _) = netns
        .run(rtnetlink::new_connection)?
        .map_err(route_error("open netlink"))?;
    let task = tokio::spawn(connection);
    let result = add_rules_and_routes(&handle, mark, table).await;
    task.abort();
    result.map_err(|(what, source)| Error::Route {
        path: netns.path().to_owned(),
        what,
        source,
    })
}

async fn add_rules_and_routes(
    handle: &Handle,
    mark: u32,
    table: u32,
) -> Result<(), (&'static str, io::Error)> {
    let rule = || {
        handle
            .rule()
            .add()
            .fw_mark(mark)
            .table_id(table)
            .action(RuleAction::ToTable)
            .priority(RULE_PRIORITY)
    };
    ignore_exists(rule().v4().execute().await).map_err(|e| ("add the IPv4 fwmark rule", e))?;
    ignore_exists(rule().v6().execute().await).map_err(|e| ("add the IPv6 fwmark rule", e))?;
    let local4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(table)
        .output_interface(LOOPBACK_IFINDEX)
        .build();
    ignore_exists(handle.route().add(local4).replace().execute().await)
        .map_err(|e| ("add the IPv4 local route", e))?;
    let local6 = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(table)
        .output_interface(LOOPBACK_IFINDEX)
        .build();
    ignore_exists(handle.route().add(local6).replace().execute().await)
        .map_err(|e| ("add the IPv6 local route", e))
}

/// The loopback device is always interface 1 in a network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

fn ignore_exists(result: Result<(), rtnetlink::Error>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == NETLINK_EEXIST => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) => Err(io::Error::from_raw_os_error(-e.raw_code())),
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// Adds the probe addresses (`ambit_ebpf_common::PROBE_ADDR4`/`PROBE_ADDR6`)
/// to the loopback interface of ztunnel's own network namespace (the node's):
/// the kubelet's probes to enrolled pods leave from them, and the pods' replies
/// must come back to the node. Idempotent.
pub async fn add_probe_addresses() -> Result<(), Error> {
    let route_error = |what| {
        move |source| Error::Route {
            path: "/proc/self/ns/net".into(),
            what,
            source,
        }
    };
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(route_error("open netlink"))?;
    let task = tokio::spawn(connection);
    let v4 = std::net::IpAddr::V4(Ipv4Addr::from(ambit_ebpf_common::PROBE_ADDR4));
    let v6 = std::net::IpAddr::V6(Ipv6Addr::from(ambit_ebpf_common::PROBE_ADDR6));
    let result = async {
        ignore_exists(
            handle
                .address()
                .add(LOOPBACK_IFINDEX, v4, 32)
                .execute()
                .await,
        )
        .map_err(route_error("add the IPv4 probe address to lo"))?;
        ignore_exists(
            handle
                .address()
                .add(LOOPBACK_IFINDEX, v6, 128)
                .execute()
                .await,
        )
        .map_err(route_error("add the IPv6 probe address to lo"))
    }
    .await;
    task.abort();
    result
}

/// The addresses of `ips` that no interface of `netns` holds: a pod's own
/// namespace holds all of its addresses, so any missing one means `netns` is
/// not that pod's.
pub async fn missing_addresses(
    netns: &Netns,
    ips: &[std::net::IpAddr],
) -> Result<Vec<std::net::IpAddr>, Error> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    let route_error = |source| Error::Route {
        path: netns.path().to_owned(),
        what: "list the addresses",
        source,
    };
    let (connection, handle, _) = netns.run(rtnetlink::new_connection)?.map_err(route_error)?;
    let task = tokio::spawn(connection);
    let mut held = Vec::new();
    let mut stream = handle.address().get().execute();
    let result = loop {
        match stream.try_next().await {
            Ok(Some(message)) => {
                held.extend(message.attributes.iter().filter_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                }));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(route_error(io::Error::other(e.to_string()))),
        }
    };
    task.abort();
    result?;
    Ok(ips
        .iter()
        .filter(|ip| !held.contains(ip))
        .copied()
        .collect())
}
