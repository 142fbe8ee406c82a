//! An authenticated but hostile HBONE peer: what it may cost the server, and
//! that well-behaved peers are served meanwhile.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use ambit_tests::{
    Testbed,
    mesh::{MeshConfig, Ztunnel, ZtunnelOptions, node_metric, send, start_server},
    privileged,
    testbed::Process,
};
use bytes::Bytes;
const TESTBIN: &str = env!("CARGO_BIN_EXE_ambit-testbin");

use ztunnel::identity::{
    Identity, TrustBundle, TrustDomain, WorkloadCert,
    ca::{CertificateAuthority, RootCa, SigningPolicy},
    csr,
};

/// The high-water mark of a process's resident memory, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A certificate for `identity` signed by the testbed's mesh root: the
/// attacker is a peer of the mesh.
fn mesh_cert(ca_dir: &Path, identity: &Identity) -> (WorkloadCert, TrustBundle) {
    let cert_pem = std::fs::read_to_string(ca_dir.join("ca.crt")).expect("ca.crt");
    let key_pem = std::fs::read_to_string(ca_dir.join("ca.key")).expect("ca.key");
    let root = RootCa::from_pem(&cert_pem, &key_pem).expect("the root");
    let bundle = TrustBundle::from_pem(cert_pem.as_bytes(), "ca.crt").expect("bundle");
    let ca = CertificateAuthority::new(
        root,
        TrustDomain::default(),
        SigningPolicy::default(),
        Vec::new(),
    )
    .expect("a CA");
    let (key, csr_pem) = csr::create(identity).expect("a CSR");
    let issued = ca.sign(&csr_pem, 3600).expect("signed");
    let cert = WorkloadCert::from_response(identity, &key, &issued.chain_pem, &bundle)
        .expect("a usable certificate");
    (cert, bundle)
}

/// Two nodes: a mesh `client` and a pod `attacker` outside the mesh on a,
/// an echo server in the mesh pod `server` on b, whose ztunnel runs with
/// `server_env` set; warmed up (the server has its certificate and has
/// served a connection).
struct Attack {
    zt_b: Ztunnel,
    _zt_a: Ztunnel,
    _echo: Process,
    /// The echo server.
    target: SocketAddr,
    /// The server pod's HBONE port.
    hbone: SocketAddr,
    // Last: torn down after the processes in it.
    bed: Testbed,
}

impl Attack {
    fn start(tag: &str, server_env: Vec<(String, String)>) -> Self {
        let bed = Testbed::builder(tag)
            .node("a")
            .node("b")
            .pod("client", "a")
            .pod("attacker", "a")
            .pod("server", "b")
            .build()
            .expect("testbed builds");
        let mesh = MeshConfig::default()
            .namespace("demo", true)
            .namespace("plain", false)
            .pod("client", "demo")
            .pod("server", "demo")
            .pod("attacker", "plain");
        let config = bed.workdir().join("mesh.yaml");
        mesh.write(&bed, &config).expect("config written");
        let server_options = ZtunnelOptions {
            env: server_env,
            ..ZtunnelOptions::default()
        };
        let zt_b = Ztunnel::start(&bed, "b", &config, &server_options).expect("ztunnel b");
        let zt_a =
            Ztunnel::start(&bed, "a", &config, &ZtunnelOptions::default()).expect("ztunnel a");
        let echo = start_server(&bed, "server", "echo", "[::]:7000");
        let server_ip = bed.pod("server").ipv4();
        let target = SocketAddr::from((server_ip, 7000));
        send(&bed, "client", target, "warm-up").expect("served");
        Self {
            zt_b,
            _zt_a: zt_a,
            _echo: echo,
            target,
            hbone: SocketAddr::from((server_ip, 15008)),
            bed,
        }
    }

    /// A well-behaved client in the mesh sends `message` to the echo server:
    /// served, and in time (a new process in the pod, a new connection
    /// through both ztunnels and one exchange take well under a second unless
    /// the attack starves the server).
    fn assert_polite_served(&self, message: &str) {
        let started = std::time::Instant::now();
        let polite =
            tokio::task::block_in_place(|| send(&self.bed, "client", self.target, message));
        let took = started.elapsed();
        eprintln!("the polite request took {took:?}");
        assert!(polite.is_ok(), "a well-behaved peer is served: {polite:?}");
        assert!(
            took < Duration::from_secs(1),
            "a well-behaved peer is served in time: {took:?}"
        );
    }

    /// TLS as a mesh peer (`demo/flood`, signed by the mesh root) that
    /// expects the server pod's identity.
    fn peer_tls(&self) -> Arc<rustls::ClientConfig> {
        let flood = Identity::new("cluster.local", "demo", "flood").unwrap();
        let (cert, bundle) = mesh_cert(&self.bed.workdir().join("ca"), &flood);
        let server = Identity::new("cluster.local", "demo", "server").unwrap();
        ztunnel::hbone::client_config(&cert, &bundle, &server).expect("TLS")
    }
}

/// A mutual TLS connection to `hbone` (a pod's 15008), dialled from inside
/// the namespace `from` (a pod outside the mesh).
async fn tls_connect(
    from: &Path,
    hbone: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = ztunnel::capture::in_netns(from, move || std::net::TcpStream::connect(hbone))
        .expect("enter the pod")
        .ok()?;
    tcp.set_nonblocking(true).ok()?;
    let tcp = tokio::net::TcpStream::from_std(tcp).ok()?;
    let name = rustls::pki_types::ServerName::IpAddress(hbone.ip().into());
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .ok()
}

/// An HTTP/2 connection over mutual TLS to `hbone`, from `from`.
async fn connect(
    from: &Path,
    hbone: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Option<h2::client::SendRequest<Bytes>> {
    let tls = tls_connect(from, hbone, tls).await?;
    let (sender, connection) = h2::client::handshake(tls).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.ready().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_huge_headers_is_refused_without_growing_the_server_and_others_are_served() {
    if !privileged(
        "a_peer_sending_huge_headers_is_refused_without_growing_the_server_and_others_are_served",
    ) {
        return;
    }
    let attack = tokio::task::block_in_place(|| Attack::start("hbone_headers", Vec::new()));
    let (bed, zt_b, target, hbone) = (&attack.bed, &attack.zt_b, attack.target, attack.hbone);

    let tls = attack.peer_tls();
    let before = vm_hwm_kib(zt_b.pid());

    // A well-behaved client of the mesh keeps connecting meanwhile.
    let polite: Vec<std::process::Command> = (0..10)
        .map(|i| {
            let mut cmd = bed.pod_command("client", TESTBIN);
            cmd.args(["send", &target.to_string(), &format!("polite-{i}")])
                .env("AMBIT_TESTBIN_TIMEOUT_MS", "5000");
            cmd
        })
        .collect();
    let polite = tokio::task::spawn_blocking(move || {
        polite
            .into_iter()
            .map(|mut cmd| cmd.output().is_ok_and(|out| out.status.success()))
            .filter(|ok| *ok)
            .count()
    });

    let pad = http_value_of(1 << 20);
    let attacker = bed.pod("attacker").netns_path();
    let (mut accepted, mut refused, mut held) = (0, 0, Vec::new());
    let mut sender = None;
    for _ in 0..100 {
        if sender.is_none() {
            sender = connect(&attacker, hbone, tls.clone()).await;
        }
        let Some(s) = sender.as_mut() else {
            refused += 1;
            continue;
        };
        let request = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(target.to_string())
            .header("x-pad", pad.clone())
            .body(())
            .unwrap();
        let outcome = match s.send_request(request, false) {
            Ok((response, stream)) => {
                match tokio::time::timeout(Duration::from_secs(5), response).await {
                    Ok(Ok(r)) if r.status() == hyper::StatusCode::OK => {
                        // Keep it open, as an attacker would.
                        held.push(stream);
                        true
                    }
                    _ => false,
                }
            }
            Err(_) => false,
        };
        if outcome {
            accepted += 1;
        } else {
            refused += 1;
            sender = None;
        }
    }
    let after = vm_hwm_kib(zt_b.pid());
    assert_eq!(accepted, 0, "a 1 MiB header list is refused");
    assert_eq!(refused, 100);
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "ztunnel b's peak RSS grew {} KiB ({before} -> {after})",
        after - before
    );
    assert_eq!(
        polite.await.expect("the polite client ran"),
        10,
        "a well-behaved peer is served meanwhile"
    );
    let counted = tokio::task::block_in_place(|| rejections(bed, "b", "flood"));
    assert_eq!(
        counted, 100,
        "each connection ended is counted (a CONTINUATION flood)"
    );
}

/// A header value of `n` bytes.
fn http_value_of(n: usize) -> hyper::header::HeaderValue {
    hyper::header::HeaderValue::from_maybe_shared(Bytes::from(vec![b'a'; n])).expect("a value")
}

/// The value of `ambit_hbone_rejections_total{reason}` in `node`'s ztunnel
/// metrics, 0 when the series does not exist.
fn rejections(bed: &Testbed, node: &str, reason: &str) -> u64 {
    node_metric(
        bed,
        node,
        &format!("ambit_hbone_rejections_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_stalling_tls_handshakes_is_held_to_its_share_counted_and_logged_once() {
    if !privileged("a_pod_stalling_tls_handshakes_is_held_to_its_share_counted_and_logged_once") {
        return;
    }
    let limits = vec![
        ("AMBIT_HBONE_MAX_HANDSHAKES_PER_PEER".into(), "4".into()),
        ("AMBIT_HBONE_HANDSHAKE_TIMEOUT_SECONDS".into(), "2".into()),
    ];
    let attack = tokio::task::block_in_place(|| Attack::start("hbone_slow", limits));
    let (bed, zt_b, target, hbone) = (&attack.bed, &attack.zt_b, attack.target, attack.hbone);

    // Ten TCP connections to the server's HBONE port that never say hello.
    let attacker = bed.pod("attacker").netns_path();
    let stalled: Vec<std::net::TcpStream> = (0..10)
        .map(|_| {
            ztunnel::capture::in_netns(&attacker, move || std::net::TcpStream::connect(hbone))
                .expect("enter the pod")
                .expect("the TCP handshake completes")
        })
        .collect();
    // The mesh client (its own peer address) is served meanwhile.
    for i in 0..5 {
        tokio::task::block_in_place(|| send(bed, "client", target, &format!("polite-{i}")))
            .expect("a well-behaved peer is served");
    }
    // Six were closed at once; the four admitted are cut at the deadline.
    for mut tcp in stalled {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        let read = std::io::Read::read(&mut tcp, &mut buf);
        assert!(
            matches!(read, Ok(0) | Err(_))
                && !read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "closed by the server, not left hanging: {read:?}"
        );
    }
    let counted = tokio::task::block_in_place(|| {
        (
            rejections(bed, "b", "handshakes_per_peer"),
            rejections(bed, "b", "handshake_timeout"),
        )
    });
    assert_eq!(counted, (6, 4), "(handshakes_per_peer, handshake_timeout)");
    // One log line per reason for the attacker, not one per connection.
    let attacker_ip = bed.pod("attacker").ipv4().to_string();
    let refused: Vec<String> = zt_b
        .access_logs()
        .iter()
        .filter(|l| l["message"] == "HBONE connection refused")
        .filter(|l| {
            l["src.addr"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{attacker_ip}:")))
        })
        .map(|l| l["reason"].as_str().unwrap_or("?").to_owned())
        .collect();
    let mut sorted = refused.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["handshake_timeout", "handshakes_per_peer"],
        "{}",
        zt_b.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_from_a_peer_that_never_reads_cost_bounded_memory() {
    if !privileged("ping_and_settings_floods_from_a_peer_that_never_reads_cost_bounded_memory") {
        return;
    }
    let attack = tokio::task::block_in_place(|| Attack::start("hbone_pings", Vec::new()));
    let (bed, zt_b, hbone) = (&attack.bed, &attack.zt_b, attack.hbone);
    let tls = attack.peer_tls();
    let before = vm_hwm_kib(zt_b.pid());

    // The preface, then 200,000 PINGs and 20,000 empty SETTINGS, each of
    // which asks for an answer; the answers are never read.
    let attacker = bed.pod("attacker").netns_path();
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    for i in 0..220_000u64 {
        if i % 11 == 0 {
            frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        } else {
            frames.extend_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]);
            frames.extend_from_slice(&i.to_be_bytes());
        }
    }
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut stream = tls_connect(&attacker, hbone, tls.clone())
            .await
            .expect("the mesh peer connects");
        // The server answers while it can, then stops reading: the write
        // stalls (backpressure) or the server ends the connection.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncWriteExt::write_all(&mut stream, &frames),
        )
        .await;
        streams.push(stream);
    }
    attack.assert_polite_served("during-the-flood");
    let after = vm_hwm_kib(zt_b.pid());
    assert!(
        after.saturating_sub(before) < 8 * 1024,
        "ztunnel b's peak RSS grew {} KiB ({before} -> {after}) for 4 flooding connections",
        after - before
    );
    drop(streams);
}

/// An HTTP/2 frame header.
fn frame_head(len: usize, kind: u8, flags: u8, stream: u32) -> Vec<u8> {
    let len = u32::try_from(len).expect("a small frame");
    let mut head = len.to_be_bytes()[1..].to_vec();
    head.extend_from_slice(&[kind, flags]);
    head.extend_from_slice(&stream.to_be_bytes());
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_opens_streams_and_never_reads_holds_only_its_connections_send_budget() {
    if !privileged(
        "a_peer_that_opens_streams_and_never_reads_holds_only_its_connections_send_budget",
    ) {
        return;
    }
    let attack = tokio::task::block_in_place(|| Attack::start("hbone_noread", Vec::new()));
    let (bed, zt_b, target, hbone) = (&attack.bed, &attack.zt_b, attack.target, attack.hbone);
    // An application that sends as fast as it may, whoever reads.
    let _source = start_server(bed, "server", "source", "[::]:7300");
    let source = SocketAddr::new(target.ip(), 7300);
    let tls = attack.peer_tls();
    let before = vm_hwm_kib(zt_b.pid());
    let fds = ambit_tests::bench::host::open_fds(zt_b.pid());

    // Raw frames: all the window there is, then 100 CONNECTs to the source
    // (HPACK literals: `:method` is static index 2, `:authority` 1); then
    // nothing is ever read. h2 alone would queue 1 MiB per stream: 100 MiB.
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend(frame_head(6, 0x4, 0, 0));
    frames.extend_from_slice(&[0, 4, 0x7f, 0xff, 0xff, 0xff]); // INITIAL_WINDOW_SIZE
    frames.extend(frame_head(4, 0x8, 0, 0));
    frames.extend_from_slice(&(0x7fff_ffffu32 - 65_535).to_be_bytes()); // WINDOW_UPDATE
    let authority = source.to_string();
    for i in 0..100u32 {
        let mut block = vec![0x02, 7];
        block.extend_from_slice(b"CONNECT");
        block.extend_from_slice(&[0x01, u8::try_from(authority.len()).expect("short")]);
        block.extend_from_slice(authority.as_bytes());
        frames.extend(frame_head(block.len(), 0x1, 0x4, 2 * i + 1)); // HEADERS, END_HEADERS
        frames.extend(block);
    }
    let attacker = bed.pod("attacker").netns_path();
    let mut stream = tls_connect(&attacker, hbone, tls)
        .await
        .expect("the mesh peer connects");
    tokio::io::AsyncWriteExt::write_all(&mut stream, &frames)
        .await
        .expect("the streams are opened");
    // The sources fill the tunnels until the server holds what it may.
    tokio::time::sleep(Duration::from_secs(4)).await;
    attack.assert_polite_served("while-stuck");
    // What the metrics show meanwhile: the budget held, and the waits.
    let queued = node_metric(bed, "b", "ambit_hbone_send_queued_bytes");
    assert!(
        (8 << 20..=16 << 20).contains(&queued),
        "ambit_hbone_send_queued_bytes {queued}: about the 16 MiB budget"
    );
    assert!(node_metric(bed, "b", "ambit_hbone_send_budget_waits_total") > 0);
    let after = vm_hwm_kib(zt_b.pid());
    let grown = after.saturating_sub(before);
    eprintln!("ztunnel b's peak RSS grew {grown} KiB for 100 streams never read");
    // The send budget (16 MiB) and a relay buffer of at most 256 KiB per
    // stream stalled on it (25 MiB); without the budget h2 adds 100 MiB.
    assert!(
        grown < 64 * 1024,
        "ztunnel b's peak RSS grew {grown} KiB ({before} -> {after}) for a peer that reads nothing"
    );
    // Gone with the connection: every descriptor back.
    drop(stream);
    let now =
        tokio::task::block_in_place(|| ambit_tests::bench::host::open_fds_settled(zt_b.pid(), fds));
    assert!(
        now <= fds,
        "ztunnel b's descriptors are back: {fds} before, {now} after"
    );
}

#[test]
fn a_tls_1_2_client_is_refused_with_the_reason() {
    if !privileged("a_tls_1_2_client_is_refused_with_the_reason") {
        return;
    }
    let attack = Attack::start("hbone_tls12", Vec::new());
    let bed = &attack.bed;
    let mut cmd = bed.pod_command("attacker", "openssl");
    cmd.args([
        "s_client",
        "-tls1_2",
        "-alpn",
        "h2",
        "-connect",
        &attack.hbone.to_string(),
    ])
    .stdin(std::process::Stdio::null());
    let error = bed
        .run(cmd, Duration::from_secs(10))
        .expect_err("a TLS 1.2 handshake fails");
    assert!(
        error.to_string().contains("alert protocol version"),
        "the server says why: {error}"
    );
    let line = attack
        .zt_b
        .wait_for_log(Duration::from_secs(5), |l| {
            l["message"] == "HBONE connection refused" && l["reason"] == "tls"
        })
        .expect("ztunnel logs the refusal");
    let logged = line["error"].as_str().unwrap_or_default();
    assert!(
        logged.to_lowercase().contains("version"),
        "the log line names the protocol version: {line}"
    );
    assert_eq!(rejections(bed, "b", "tls"), 1);
}
