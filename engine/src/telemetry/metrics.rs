//! Prometheus metrics: a registry per service, served in the text exposition format on an
//! address of its own (never the RPC port), the process's memory and CPU read from `/proc`
//! at each scrape, and RPC calls counted by method and outcome.
//!
//! Every metric is named `kiln_<role>_…` (`kiln_controller_`, `kiln_worker_`, `kiln_web_`),
//! except the standard `process_…` ones; `docs/metrics.md` documents each. The endpoint
//! answers `GET /metrics` and nothing else, over plain HTTP/1.1 with the connection closed
//! after each answer: it is meant for a Prometheus server on a network the operator trusts
//! (bind it to loopback or a private address), and it reveals figures, never secrets, inputs
//! or results.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tarpc::server::Serve;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The content type of the exposition format the endpoint serves.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The longest request head read: a scrape's is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 << 10;

/// How long a client may take to send its request: a stalled one does not hold a slot.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes answered at once; more wait for a slot (Prometheus scrapes once per interval).
const MAX_CONNECTIONS: usize = 8;

/// A registry with the process's own metrics in it; each role registers its metrics in a
/// sub-registry named after it (`registry.sub_registry_with_prefix("kiln_controller")`).
pub fn new_registry() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// The registry's metrics in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!("cannot encode the metrics: {e}");
    }
    text
}

/// The `/metrics` endpoint, served until this is dropped.
#[derive(Debug)]
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsEndpoint {
    /// The address it listens on (with the real port when given port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `registry` on `listen` at `/metrics`; answers once it is bound.
pub async fn serve(listen: SocketAddr, registry: Registry) -> io::Result<MetricsEndpoint> {
    let listener = TcpListener::bind(listen).await?;
    let local_addr = listener.local_addr()?;
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("metrics endpoint: cannot accept a connection: {e}");
                    continue;
                }
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                if let Err(e) = answer(stream, registry).await {
                    tracing::debug!("metrics endpoint: {e}");
                }
                drop(permit);
            });
        }
    });
    tracing::info!(%local_addr, "serving metrics on http://{local_addr}/metrics");
    Ok(MetricsEndpoint { local_addr, task })
}

/// Reads one request and answers it: the metrics for `GET /metrics`, 404 or 405 otherwise.
async fn answer(mut stream: TcpStream, registry: Arc<Registry>) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await?;
            if n == 0 || head.len() + n > MAX_REQUEST_BYTES {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "no complete request head"));
            }
            head.extend_from_slice(&buffer[..n]);
        }
        Ok(())
    })
    .await;
    read.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the request did not arrive in time"))??;
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            // Reading /proc and formatting is quick but blocking work.
            let body = tokio::task::spawn_blocking(move || render(&registry)).await.map_err(io::Error::other)?;
            ("200 OK", CONTENT_TYPE, body)
        }
        (_, "/metrics") => ("405 Method Not Allowed", "text/plain; charset=utf-8", "use GET\n".to_owned()),
        _ => ("404 Not Found", "text/plain; charset=utf-8", "metrics are at /metrics\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The standard `process_…` metrics of this process, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says of this process.
struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    threads: u64,
    start_time_seconds: f64,
    open_fds: u64,
}

impl ProcessFigures {
    fn read() -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name, in parentheses, may hold spaces: the fields follow the last ')'.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
        // Fields counted from the state, the third field of proc(5).
        let field = |n: usize| fields.get(n - 3).and_then(|text| text.parse::<u64>().ok());
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page_size) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)? as f64;
        let page_size = u64::try_from(page_size).ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|dir| dir.count() as u64).unwrap_or(0);
        Some(ProcessFigures {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)?.saturating_mul(page_size),
            open_fds,
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(figures) = ProcessFigures::read() else { return Ok(()) };
        let cpu = ConstCounter::new(figures.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "CPU time the process used, user and system",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory", "Resident memory of the process", Some(Unit::Bytes), figures.resident_bytes),
            ("process_virtual_memory", "Virtual memory of the process", Some(Unit::Bytes), figures.virtual_bytes),
            ("process_threads", "Threads of the process", None, figures.threads),
            ("process_open_fds", "Open file descriptors of the process", None, figures.open_fds),
        ];
        for (name, help, unit, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?)?;
        }
        let start = ConstGauge::new(figures.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time",
            "When the process started, since the Unix epoch",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The labels of an RPC call: the method and how it ended (`ok`, `error` when the service
/// answered an error, `server_error` when tarpc could not run the call).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RpcLabels {
    /// The method's name (`watch`, `run_chunks`).
    pub method: String,
    /// `ok`, `error` or `server_error`.
    pub outcome: &'static str,
}

/// RPC calls served, by method and outcome.
pub type RpcCalls = Family<RpcLabels, Counter>;

/// Registers `calls` in `registry` as `<prefix>_rpc_calls_total`.
pub fn register_rpc_calls(registry: &mut Registry, calls: &RpcCalls) {
    registry.register("rpc_calls", "RPC calls served, by method and outcome", calls.clone());
}

/// Whether a service's answer was an error, for [`RpcLabels::outcome`].
pub trait RpcOutcome {
    /// `ok` or `error`.
    fn outcome(&self) -> &'static str;
}

/// The outcome of a method's answer.
pub fn outcome_of<T, E>(answer: &Result<T, E>) -> &'static str {
    if answer.is_ok() { "ok" } else { "error" }
}

impl RpcOutcome for crate::rpc::ControllerResponse {
    fn outcome(&self) -> &'static str {
        use crate::rpc::ControllerResponse as R;
        match self {
            R::Register(answer) => outcome_of(answer),
            R::Activate(answer) | R::Heartbeat(answer) | R::UploadInput(answer) => outcome_of(answer),
            R::FinishInput(answer) | R::RemoveWorker(answer) => outcome_of(answer),
            R::Renew(answer) => outcome_of(answer),
            R::FetchPlugin(answer) => outcome_of(answer),
            R::UploadPlugin(answer) => outcome_of(answer),
            R::ResultPiece(answer) => outcome_of(answer),
            R::CreateJob(answer) => outcome_of(answer),
            R::Watch(answer) | R::Cancel(answer) => outcome_of(answer),
            R::ListJobs(answer) => outcome_of(answer),
            R::ClusterInfo(answer) => outcome_of(answer),
            R::PluginOutput(answer) => outcome_of(answer),
        }
    }
}

impl RpcOutcome for crate::rpc::WorkerResponse {
    fn outcome(&self) -> &'static str {
        use crate::rpc::WorkerResponse as R;
        match self {
            R::Prepare(answer) | R::Release(answer) | R::StagePartials(answer) => outcome_of(answer),
            R::FetchOutput(answer) => outcome_of(answer),
            R::RunChunks(answer) => outcome_of(answer),
            R::Combine(answer) => outcome_of(answer),
            R::Aggregate(answer) => outcome_of(answer),
            R::BuildProgress(answer) => outcome_of(answer),
        }
    }
}

/// A tarpc service that counts each call it serves in an [`RpcCalls`].
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    calls: RpcCalls,
}

impl<S> Counted<S> {
    /// `inner`, counting its calls in `calls`.
    pub fn new(inner: S, calls: RpcCalls) -> Counted<S> {
        Counted { inner, calls }
    }
}

impl<S> Serve for Counted<S>
where
    S: Serve,
    S::Resp: RpcOutcome,
{
    type Req = S::Req;
    type Resp = S::Resp;

    async fn serve(self, ctx: tarpc::context::Context, req: Self::Req) -> Result<Self::Resp, tarpc::ServerError> {
        // tarpc names methods `Controller.watch`; the metric's name already says the role.
        let name = tarpc::RequestName::name(&req);
        let method = name.rsplit('.').next().unwrap_or(name).to_owned();
        let answer = self.inner.serve(ctx, req).await;
        let outcome = match &answer {
            Ok(response) => response.outcome(),
            Err(_) => "server_error",
        };
        self.calls.get_or_create(&RpcLabels { method, outcome }).inc();
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read_from_proc() {
        let figures = ProcessFigures::read().expect("/proc/self is readable");
        assert!(figures.resident_bytes > 0 && figures.virtual_bytes >= figures.resident_bytes);
        assert!(figures.threads >= 1 && figures.open_fds >= 3);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(figures.start_time_seconds > now - 3600.0 && figures.start_time_seconds <= now + 1.0);
        let text = render(&new_registry());
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
    }
}
