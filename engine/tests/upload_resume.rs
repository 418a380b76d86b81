//! Uploads that survive the controller: `kiln submit` keeps sending its input across a
//! controller killed and restarted mid-upload, continuing from what the controller holds, and
//! an upload its client abandoned fails its job as such, with the partial input deleted.
//! The client reaches the controller through a throttling proxy, so that the upload is still
//! going when the controller is killed.

#[path = "util/cluster.rs"]
mod cluster;
mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, JOB_TIMEOUT};
use util::{example, word_counts, word_text, write_input};

/// The proxy's pace from client to controller: an 8 MiB piece takes about two seconds.
const BYTES_PER_SECOND: usize = 4 << 20;

/// Forwards connections on a loopback port to `target`, client-to-server bytes at
/// [`BYTES_PER_SECOND`] per connection. A connection the target refuses is closed at once.
fn throttling_proxy(target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(target) else { continue };
            let (client_in, server_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pump(client_in, server_out, Some(BYTES_PER_SECOND)));
            std::thread::spawn(move || pump(server, client, None));
        }
    });
    addr
}

/// Copies `from` to `to`, at most `pace` bytes a second, until either side ends.
fn pump(mut from: TcpStream, mut to: TcpStream, pace: Option<usize>) {
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
        if let Some(pace) = pace {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / pace as f64));
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// `kiln submit` of the word count over `input` through `via`, stdout and stderr piped.
fn start_submit(cluster: &Cluster, via: SocketAddr, input: &std::path::Path) -> Child {
    let plugin = example("wordcount");
    cluster::kiln_command()
        .args(["submit", "--plugin", plugin.to_str().unwrap(), "--input", input.to_str().unwrap()])
        .args(["--chunk-size", "1MiB", "--controller", &via.to_string(), "--api-key", &cluster.api_key()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln submit starts")
}

/// Waits until job 1 is uploading and holds at least `bytes` of its input.
fn wait_uploading(cluster: &Cluster, bytes: u64) {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let run = cluster.kiln(&["jobs", "--json"]);
        let jobs: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        if jobs[0]["state"] == "Uploading" {
            let status = cluster.status(1);
            if status["bytes_total"].as_u64() >= Some(bytes) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "job 1 did not upload {bytes} bytes: {jobs:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn output_of(mut child: Child) -> (bool, String, String) {
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (child.wait().unwrap().success(), stdout, stderr)
}

#[test]
fn an_upload_goes_on_across_a_controller_killed_and_restarted_mid_upload() {
    let mut cluster = Cluster::start(1);
    let text = word_text(11, 640_000);
    assert!(text.len() > 20 << 20, "the input spans several pieces");
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let via = throttling_proxy(cluster.controller.addr);
    let submit = start_submit(&cluster, via, &input);

    wait_uploading(&cluster, 8 << 20);
    cluster.kill_controller();
    std::thread::sleep(Duration::from_secs(1));
    cluster.restart_controller();

    let (success, stdout, stderr) = output_of(submit);
    assert!(success, "kiln submit failed:\n{stderr}");
    assert!(stderr.contains("controller unreachable, retrying (job 1, "), "{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON result");
    assert_eq!(result, word_counts(&text));
}

#[test]
fn an_upload_its_client_abandoned_fails_the_job_and_deletes_the_partial_input() {
    let cluster = Cluster::start_with(1, &["--upload-abandon", "3"]);
    let text = word_text(12, 640_000);
    let input = write_input(cluster.dir.path(), "words.txt", &text);
    let via = throttling_proxy(cluster.controller.addr);
    let mut submit = start_submit(&cluster, via, &input);

    wait_uploading(&cluster, 8 << 20);
    submit.kill().unwrap();
    submit.wait().unwrap();

    let status = cluster.wait_ended(1);
    assert_eq!(status["state"], "Failed", "{status:#}");
    let message = status["failure"]["message"].as_str().unwrap();
    assert!(message.starts_with("upload abandoned: no new piece of input for 3 s"), "{message}");
    let spooled = cluster.data_dir().join("inputs").join("1.txt");
    assert!(!spooled.exists(), "the partial input was kept at {}", spooled.display());
    // The failure names the job for whoever asks for its result.
    let run = cluster.kiln(&["result", "1"]);
    assert!(
        !run.success && run.stderr.contains("job 1 failed: the input cannot be used: upload abandoned"),
        "{}",
        run.stderr
    );
}
