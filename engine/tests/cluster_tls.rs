//! TLS on every link of a real cluster: what crosses the network is unreadable, keys and
//! tokens pin the controller's CA, workers hold short-lived certificates issued at
//! registration, removed or forged workers are refused, and plain TCP needs a flag spelled to
//! be noticed (and loopback, unless a second one).

#[path = "util/cluster.rs"]
mod cluster;
#[path = "util/proxy.rs"]
mod proxy;
mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cluster::{API_KEY, Cluster, Daemon, JOIN_TOKEN, kiln_command, misbehave_totals, slow_params, trust_of};
use kiln_engine::plugin_source::read_source;
use kiln_engine::rpc::{ControllerClient, PROTOCOL_VERSION, RpcError, Secret, WorkerInfo};
use kiln_engine::tls::ca::{ClusterCa, WorkerKey, self_signed};
use kiln_engine::tls::key::Trust;
use kiln_engine::tls::verify::{controller_server, dial_controller, worker_server};
use kiln_engine::tls::{CONTROLLER_NAME, Fingerprint};
use kiln_engine::tls::{frames, link};
use proxy::Proxy;
use serde_bytes::ByteBuf;
use serde_json::Value;
use util::{Run, example, fixture, word_text};

/// A word that occurs in the input and nowhere else.
const KNOWN_WORD: &str = "quixoticmarmalade7";

/// A line of the wordcount plugin's source.
const SOURCE_LINE: &str = "impl MapReduce for WordCount";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `kiln ARGS --controller ADDR --api-key KEY`.
fn kiln_via(addr: SocketAddr, key: &str, args: &[&str]) -> Run {
    let mut command = kiln_command();
    command.args(args).args(["--controller", &addr.to_string(), "--api-key", key]);
    command.output().expect("kiln runs").into()
}

fn input_with_known_word(dir: &Path) -> (std::path::PathBuf, String) {
    let mut text = word_text(71, 3_000);
    for i in 0..50 {
        text.push_str(&format!("{KNOWN_WORD} line {i}\n"));
    }
    let path = dir.join("words.txt");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// Runs a whole wordcount job with a proxy on each link: client to controller, worker to
/// controller and controller to worker (the worker advertises the proxy). Answers the
/// proxies, after checking the result.
fn job_through_proxies(controller_flags: &[&str]) -> (Cluster, [Proxy; 3], usize) {
    let mut cluster = Cluster::start_with(0, controller_flags);
    let to_controller = Proxy::start(cluster.controller.addr);
    let worker_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let to_worker = Proxy::start(worker_addr);
    let token = cluster::worker_token(&cluster.controller, JOIN_TOKEN);
    let listen = worker_addr.to_string();
    let advertise = to_worker.addr.to_string();
    let extra = ["--listen", listen.as_str(), "--advertise", advertise.as_str()];
    let worker = Daemon::start(cluster.worker_command(&to_controller.addr.to_string(), &token, 2, &extra));
    cluster.workers.push(worker);
    cluster.wait_workers(1);

    let from_client = Proxy::start(cluster.controller.addr);
    let (input, text) = input_with_known_word(cluster.dir.path());
    let (plugin, input) = (example("wordcount"), input.to_str().unwrap().to_owned());
    let args = ["submit", "--plugin", plugin.to_str().unwrap(), "--input", &input, "--chunk-size", "16KiB"];
    let run = kiln_via(from_client.addr, &cluster.api_key(), &args);
    assert!(run.success, "the job failed:\n{}", run.stderr);
    let counts: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(counts[KNOWN_WORD], 50, "the job's result is wrong");
    let words = text.split_whitespace().count() as u64;
    let counted: u64 = counts.as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(counted, words, "every word is counted once");
    (cluster, [from_client, to_controller, to_worker], text.len())
}

/// What must never cross a link readably: the secrets, a word of the input, the plugin's
/// source and its archive as the client sends it.
fn secrets_and_data() -> Vec<(&'static str, Vec<u8>)> {
    let archive = read_source(&example("wordcount")).unwrap().to_tar_gz();
    vec![
        ("the API key", API_KEY.as_bytes().to_vec()),
        ("the join token", JOIN_TOKEN.as_bytes().to_vec()),
        ("a word of the input", KNOWN_WORD.as_bytes().to_vec()),
        ("the plugin's source", SOURCE_LINE.as_bytes().to_vec()),
        ("the plugin's archive", archive[archive.len() / 2..archive.len() / 2 + 64].to_vec()),
    ]
}

#[test]
fn a_whole_jobs_traffic_on_every_link_is_encrypted() {
    assert!(std::fs::read_to_string(example("wordcount").join("src/lib.rs")).unwrap().contains(SOURCE_LINE));
    let (_cluster, proxies, input_len) = job_through_proxies(&[]);
    // Every link carries at least the plugin's archive (uploaded by the client, fetched by the
    // worker) or the input's chunks: a proxy that saw less did not record.
    let archive_len = read_source(&example("wordcount")).unwrap().to_tar_gz().len();
    for (proxy, link) in proxies.iter().zip(["client to controller", "worker to controller", "controller to worker"]) {
        let streams = proxy.streams();
        let seen = proxy.total_bytes();
        assert!(
            seen > archive_len,
            "the proxy on the {link} link saw only {seen} bytes, less than the {archive_len} of the archive"
        );
        for stream in streams.iter().filter(|stream| !stream.is_empty()) {
            assert_eq!(stream[0], 0x16, "a stream on the {link} link does not start with a TLS handshake record");
        }
        for (what, bytes) in secrets_and_data() {
            assert!(!proxy.saw(&bytes), "{what} crossed the {link} link readably");
        }
    }
    // The input crossed the links it should have: uploaded, then sent to the worker in chunks.
    let (uploaded, dispatched) = (proxies[0].total_bytes(), proxies[2].total_bytes());
    assert!(uploaded > input_len && dispatched > input_len, "{uploaded} and {dispatched} bytes for {input_len}");
}

#[test]
fn the_recording_proxy_would_see_it_all_on_plain_tcp_and_plaintext_works_on_loopback() {
    let (_cluster, proxies, _) = job_through_proxies(&["--insecure-plaintext"]);
    let seen_anywhere = |bytes: &[u8]| proxies.iter().any(|proxy| proxy.saw(bytes));
    for (what, bytes) in secrets_and_data() {
        if what != "the plugin's source" {
            assert!(seen_anywhere(&bytes), "the proxies missed {what} on plain TCP");
        }
    }
}

#[test]
fn plain_tcp_is_refused_off_loopback_without_the_second_flag() {
    let dir = tempfile::tempdir().unwrap();
    let controller = |extra: &[&str]| {
        let mut command = kiln_command();
        command.args(["controller", "--listen", "0.0.0.0:0", "--data-dir"]).arg(dir.path().join("c")).args(extra);
        command
    };
    let refused: Run = controller(&["--insecure-plaintext"]).output().unwrap().into();
    assert!(!refused.success);
    assert!(refused.stderr.contains("refusing --insecure-plaintext on 0.0.0.0"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--insecure-plaintext-allow-remote"), "{}", refused.stderr);
    let allowed = Daemon::start(controller(&["--insecure-plaintext", "--insecure-plaintext-allow-remote"]));
    assert!(allowed.stderr().contains("--insecure-plaintext"), "no warning:\n{}", allowed.stderr());

    // A worker given a plaintext token serves on loopback only, too.
    let token = format!("kiln-join-v2.plaintext.{JOIN_TOKEN}");
    let worker = |listen: &str| {
        let mut command = kiln_command();
        let controller = format!("127.0.0.1:{}", allowed.addr.port());
        command.args(["worker", "--controller", &controller, "--join-token", &token, "--listen", listen]);
        command.arg("--cache-dir").arg(dir.path().join("cache"));
        command
    };
    let refused: Run = worker("0.0.0.0:0").output().unwrap().into();
    assert!(!refused.success && refused.stderr.contains("refusing to serve plain TCP"), "{}", refused.stderr);
}

#[test]
fn a_key_or_token_pinning_another_ca_is_refused_before_its_secret_is_sent() {
    let mut cluster = Cluster::start(0);
    let proxy = Proxy::start(cluster.controller.addr);
    let other = Fingerprint::of(b"another cluster's CA").to_hex();

    let run = kiln_via(proxy.addr, &format!("kiln-key-v2.{other}.{API_KEY}"), &["jobs"]);
    assert!(!run.success);
    let expected = format!("the controller at {} is not the one this key belongs to", proxy.addr);
    assert!(run.stderr.contains(&expected), "{}", run.stderr);

    let token = format!("kiln-join-v2.{other}.{JOIN_TOKEN}");
    let mut worker = Daemon::start(cluster.worker_command(&proxy.addr.to_string(), &token, 1, &[]));
    assert_eq!(worker.wait_exit(Duration::from_secs(20)), Some(false), "the worker keeps going");
    assert!(worker.stderr().contains("is not the one this join token belongs to"), "{}", worker.stderr());

    assert!(proxy.total_bytes() > 0 && proxy.streams().iter().all(|s| s.is_empty() || s[0] == 0x16));
    assert!(!proxy.saw(API_KEY.as_bytes()) && !proxy.saw(JOIN_TOKEN.as_bytes()), "a secret reached the wire");
    assert!(cluster.cluster_info()["workers"].as_array().unwrap().is_empty());
    cluster.workers.clear();
}

/// A TLS server presenting `config`'s certificate, counting the connections whose handshake
/// it completed and the bytes it decrypted from them.
struct Impostor {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    decrypted: Arc<AtomicUsize>,
}

fn impostor(runtime: &tokio::runtime::Runtime, config: Arc<rustls::ServerConfig>) -> Impostor {
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (handshakes, decrypted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, d) = (Arc::clone(&handshakes), Arc::clone(&decrypted));
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, h, d) = (Arc::clone(&config), Arc::clone(&h), Arc::clone(&d));
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let Ok(mut link) = link::accept(tcp, Some(config)).await else { return };
                h.fetch_add(1, Ordering::Relaxed);
                let mut buffer = vec![0u8; 4096];
                while let Ok(n) = link.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    d.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    Impostor { addr, handshakes, decrypted }
}

#[test]
fn a_man_in_the_middle_with_its_own_certificate_is_refused_by_clients_workers_and_the_controller() {
    let mut cluster = Cluster::start(0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let (other, _) = ClusterCa::load_or_create(other_dir.path()).unwrap();

    // In front of the controller: another CA's certificate for the controller's name, and a
    // self-signed one.
    for certificate in [other.issue_controller(&[]).unwrap(), self_signed(CONTROLLER_NAME).unwrap()] {
        let mitm = impostor(&runtime, controller_server(other.cert(), certificate, None).unwrap());
        let run = kiln_via(mitm.addr, &cluster.api_key(), &["jobs"]);
        assert!(!run.success && run.stderr.contains("is not the one this key belongs to"), "{}", run.stderr);
        let token = cluster::worker_token(&cluster.controller, JOIN_TOKEN);
        let mut worker = Daemon::start(cluster.worker_command(&mitm.addr.to_string(), &token, 1, &[]));
        assert_eq!(worker.wait_exit(Duration::from_secs(20)), Some(false), "the worker keeps going");
        assert!(worker.stderr().contains("is not the one this join token belongs to"), "{}", worker.stderr());
        assert_eq!(mitm.decrypted.load(Ordering::Relaxed), 0, "the impostor read something");
    }

    // In front of a worker, on the controller's dial-back: the controller refuses it, and the
    // worker, never activated, stops.
    let key = WorkerKey::generate().unwrap();
    let (cert, _) = other.issue_worker(1, &key.public_key(), Duration::from_secs(600)).unwrap();
    let certificate = key.certified(cert, other.cert().clone()).unwrap();
    let mitm = impostor(&runtime, worker_server(other.cert(), certificate).unwrap());
    let token = cluster::worker_token(&cluster.controller, JOIN_TOKEN);
    let advertise = mitm.addr.to_string();
    let command = cluster.worker_command(&cluster.controller.addr.to_string(), &token, 1, &["--advertise", &advertise]);
    let mut worker = Daemon::start(command);
    assert_eq!(worker.wait_exit(Duration::from_secs(30)), Some(false), "the worker keeps going");
    assert!(worker.stderr().contains("cannot reach the worker at"), "{}", worker.stderr());
    assert_eq!(mitm.handshakes.load(Ordering::Relaxed), 0, "the controller took the impostor for its worker");
    assert!(cluster.cluster_info()["workers"].as_array().unwrap().is_empty());
    cluster.workers.clear();
}

/// A connection to the controller pinning its CA, presenting `identity`.
async fn controller_client(
    addr: SocketAddr,
    fingerprint: Fingerprint,
    identity: Option<Arc<rustls::sign::CertifiedKey>>,
) -> std::io::Result<ControllerClient> {
    let dial = dial_controller(Trust::Pinned(fingerprint), &addr.to_string(), None, identity).unwrap();
    let link = link::connect(&addr.to_string(), dial.as_ref(), Duration::from_secs(5)).await?;
    Ok(ControllerClient::new(tarpc::client::Config::default(), frames::dialled(link)).spawn())
}

#[test]
fn forged_or_expired_worker_certificates_get_no_call_through() {
    let cluster = Cluster::start(0);
    let addr = cluster.controller.addr;
    let fingerprint = Fingerprint::from_hex(&trust_of(&cluster.controller)).unwrap();
    // The cluster's own CA, read from the data directory as the controller keeps it.
    let (ca, made) = ClusterCa::load_or_create(&cluster.data_dir().join("tls")).unwrap();
    assert!(!made && ca.fingerprint() == fingerprint);
    let other_dir = tempfile::tempdir().unwrap();
    let (other, _) = ClusterCa::load_or_create(other_dir.path()).unwrap();
    let key = WorkerKey::generate().unwrap();
    let info = WorkerInfo {
        protocol: PROTOCOL_VERSION,
        address: "127.0.0.1:1".to_owned(),
        processes: 1,
        hostname: "forger".to_owned(),
        public_key: ByteBuf::from(key.public_key()),
    };
    let ctx = || {
        let mut ctx = tarpc::context::current();
        ctx.deadline = std::time::Instant::now() + Duration::from_secs(10);
        ctx
    };
    let token = Secret::new(JOIN_TOKEN);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (cert, _) = ca.issue_worker(1, &key.public_key(), Duration::from_secs(1)).unwrap();
        let expired = key.certified(cert, ca.cert().clone()).unwrap();
        let (cert, _) = other.issue_worker(1, &key.public_key(), Duration::from_secs(600)).unwrap();
        let other_ca = key.certified(cert, other.cert().clone()).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (what, forged) in
            [("self-signed", self_signed("worker-1.kiln").unwrap()), ("another CA's", other_ca), ("expired", expired)]
        {
            // The handshake may finish on the client's side; the controller's refusal ends the link.
            let Ok(client) = controller_client(addr, fingerprint, Some(forged)).await else { continue };
            let answer = client.register(ctx(), token.clone(), info.clone()).await;
            assert!(answer.is_err(), "a worker with a {what} certificate registered: {answer:?}");
            let answer = client.heartbeat(ctx(), 1, Secret::generate()).await;
            assert!(answer.is_err(), "a worker with a {what} certificate was answered: {answer:?}");
        }

        // Registered with the token, a worker must still present the certificate it was given:
        // over a link without it, it cannot activate (and so gets no chunks), send heartbeats or
        // fetch plugins.
        let anonymous = controller_client(addr, fingerprint, None).await.unwrap();
        let registration = anonymous.register(ctx(), token.clone(), info.clone()).await.unwrap().unwrap();
        assert!(registration.certificate.is_some());
        let (id, secret) = (registration.worker_id, registration.worker_secret);
        let needs_certificate = |answer: Result<(), RpcError>| {
            assert!(matches!(&answer, Err(RpcError::Unauthorized(m)) if m.contains("certificate")), "{answer:?}");
        };
        needs_certificate(anonymous.activate(ctx(), id, secret.clone()).await.unwrap());
        needs_certificate(anonymous.heartbeat(ctx(), id, secret.clone()).await.unwrap());
        needs_certificate(anonymous.fetch_plugin(ctx(), id, secret.clone(), "ab".into()).await.unwrap().map(drop));
    });
    assert!(cluster.cluster_info()["workers"].as_array().unwrap().is_empty(), "a forger joined");
}

#[test]
fn workers_renew_short_lived_certificates_and_keep_running_jobs() {
    let cluster = Cluster::start_with(1, &["--worker-cert-lifetime", "3"]);
    cluster.wait_workers(1);
    let worker_id = cluster.cluster_info()["workers"][0]["worker_id"].clone();
    let text: String = (0..2_000).map(|i| format!("line {i}\n")).collect();
    let input = cluster.dir.path().join("lines.txt");
    std::fs::write(&input, &text).unwrap();
    // Slow chunks: the job outlives a few certificates.
    let params = slow_params(2_000, 250, 1_000);
    let run = cluster.submit(&fixture("misbehave"), &input, &["--params", &params, "--chunk-size", "2KiB"]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), misbehave_totals(&text));
    let renewals = cluster.workers[0].stderr().matches("renewed the worker's certificate").count();
    assert!(renewals >= 2, "{renewals} renewals:\n{}", cluster.workers[0].stderr());
    let info = cluster.cluster_info();
    assert_eq!(info["workers"].as_array().unwrap().len(), 1);
    assert_eq!(info["workers"][0]["worker_id"], worker_id, "the worker registered again instead of renewing");
}

#[test]
fn a_removed_worker_is_refused_and_its_work_goes_elsewhere() {
    let mut cluster = Cluster::start(2);
    cluster.wait_workers(2);
    let workers = cluster.cluster_info()["workers"].as_array().unwrap().clone();
    let removed = workers[0]["worker_id"].as_u64().unwrap().to_string();
    let run = cluster.kiln(&["cluster", "remove", &removed]);
    assert!(run.success, "{}", run.stderr);
    let gone = cluster
        .workers
        .iter_mut()
        .position(|worker| worker.wait_exit(Duration::from_secs(10)).is_some())
        .expect("the removed worker stops");
    assert!(cluster.workers[gone].stderr().contains("removed from the cluster"), "{}", cluster.workers[gone].stderr());
    let left = cluster.cluster_info()["workers"].as_array().unwrap().clone();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["worker_id"].as_u64().unwrap().to_string(), removed);
    let run = cluster.kiln(&["cluster", "remove", &removed]);
    assert!(!run.success && run.stderr.contains("not registered"), "{}", run.stderr);

    let (input, _) = input_with_known_word(cluster.dir.path());
    let run = cluster.submit(&example("wordcount"), &input, &["--chunk-size", "16KiB"]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap()[KNOWN_WORD], 50);
}

#[test]
fn an_operators_certificate_is_checked_against_the_ca_file_while_workers_still_pin_the_cluster_ca() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    // An operator's own CA, and a certificate it issued for localhost.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "an operator's CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();
    let (cert, key, ca_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let cluster = Cluster::start_with(1, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(
        cluster.controller.stderr().contains("clients use kiln-key-v2.pki.<API key>"),
        "{}",
        cluster.controller.stderr()
    );
    cluster.wait_workers(1);
    let addr = format!("localhost:{}", cluster.controller.addr.port());
    let pki_key = format!("kiln-key-v2.pki.{API_KEY}");
    let kiln = |extra: &[&str]| -> Run {
        let mut command = kiln_command();
        command.args(extra).args(["--controller", &addr, "--api-key", &pki_key]);
        command.output().unwrap().into()
    };
    let without_ca_file = kiln(&["jobs"]);
    assert!(!without_ca_file.success, "the system roots took an operator's private CA");
    let expected = format!("the certificate of the controller at {addr} is not trusted");
    assert!(without_ca_file.stderr.contains(&expected), "{}", without_ca_file.stderr);

    // Checked against the operator's CA, a job runs on the workers, which pin the cluster's CA.
    let (input, _) = input_with_known_word(cluster.dir.path());
    let plugin = example("wordcount");
    let run = kiln(&[
        "submit",
        "--plugin",
        plugin.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--ca-file",
        ca_file.to_str().unwrap(),
    ]);
    assert!(run.success, "{}", run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap()[KNOWN_WORD], 50);
    // A key pinning the cluster's own CA still works too.
    assert!(cluster.kiln(&["jobs"]).success);
}
