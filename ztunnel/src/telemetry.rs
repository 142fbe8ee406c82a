//! Logging: one place sets up the `tracing` subscriber for the whole process.
//!
//! `RUST_LOG` selects what is logged (default `info`), `LOG_FORMAT` how.
//!
//! With an OTLP endpoint ([`Otlp`], `OTEL_EXPORTER_OTLP_ENDPOINT`), the spans
//! of ambit's crates, debug level included (a connection and its steps:
//! route, authorize, connect, tunnel), are also exported over OTLP/gRPC, in
//! batches, from a thread of their own; `RUST_LOG` does not filter them.
//! A connection's span continues its W3C trace ([`set_trace_parent`]), so the
//! exported spans share the `trace_id` of the access lines.
//!
//! Lines are formatted on the thread that logs and appended to a buffer in
//! memory; a writer thread wakes when the buffer stops being empty, writes
//! what is there to stderr in one `write(2)`, then rests for [`LINGER`]
//! while the next lines gather (a line logged at rest leaves at once; under
//! load, one write per [`LINGER`]).
//! An access line per request or connection thus costs its formatting and a
//! copy under a lock, not a system call and the wake-up of whatever reads
//! stderr (measured at the waypoint: a write and a channel wake-up per line,
//! with the writer thread spinning in `sched_yield` between lines, were a
//! tenth of its CPU). Lines reach stderr at most [`LINGER`] late, in order.
//! Nothing is dropped: past [`MAX_PENDING`] bytes the thread that logs
//! writes the buffer out itself. Keep the [`LogGuard`] until the process
//! ends; dropping it writes out what is pending.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use opentelemetry::trace::TracerProvider as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::filter_fn, fmt, fmt::MakeWriter, layer::SubscriberExt as _,
    reload, util::SubscriberInitExt as _,
};

use crate::{settings::LogFormat, trace::TraceParent};

/// Where spans are exported (OTLP over gRPC), and as which service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// The collector, `http://host:4317`.
    pub endpoint: String,
    /// `service.name` of the spans (`OTEL_SERVICE_NAME`, else the binary's).
    pub service: String,
}

/// Whether spans are exported: set once the exporter is installed.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes `span` a child of `parent` (a remote span: the CONNECT's, or the
/// root a connection starts), so its exported trace is the connection's.
/// Does nothing when spans are not exported.
pub fn set_trace_parent(span: &tracing::Span, parent: &TraceParent) {
    use opentelemetry::trace::TraceContextExt as _;
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let (trace_id, span_id, flags) = parent.ids();
    let remote = opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from(trace_id),
        opentelemetry::trace::SpanId::from(span_id),
        opentelemetry::trace::TraceFlags::new(flags),
        true,
        opentelemetry::trace::TraceState::NONE,
    );
    // A span the filter disabled has nothing to export.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}

/// `parent` with the id of `span` as exported, so the next hop's span is its
/// child; `parent` unchanged when spans are not exported.
pub fn next_hop(span: &tracing::Span, parent: &TraceParent) -> TraceParent {
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return *parent;
    }
    use opentelemetry::trace::TraceContextExt as _;
    let context = span.context();
    let id = context.span().span_context().span_id();
    parent.with_span_id(u64::from_be_bytes(id.to_bytes()))
}

/// How long the writer thread rests after a write, letting lines gather.
pub const LINGER: Duration = Duration::from_millis(5);

/// Bytes of lines that may wait before the thread that logs writes them.
pub const MAX_PENDING: usize = 1024 * 1024;

/// Keeps the writer thread; dropping it writes out what is pending (and
/// exports the spans that wait).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    writer: Option<(Batched, JoinHandle<()>)>,
    level: Option<LogLevel>,
    spans: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl LogGuard {
    /// The handle that changes the log filter, when this call installed the
    /// subscriber.
    pub fn level(&self) -> Option<LogLevel> {
        self.level.clone()
    }
}

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Changes the process's log filter while it runs (the admin endpoint's
/// `/logging`): the same directives as `RUST_LOG` (`info`,
/// `access=warn,ztunnel::hbone=debug`, ...).
#[derive(Clone)]
pub struct LogLevel(Arc<LevelInner>);

struct LevelInner {
    current: Mutex<String>,
    reload: Reload,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LogLevel").field(&self.current()).finish()
    }
}

impl LogLevel {
    fn new(current: String, reload: Reload) -> Self {
        Self(Arc::new(LevelInner {
            current: Mutex::new(current),
            reload,
        }))
    }

    /// The directives in force.
    pub fn current(&self) -> String {
        self.0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the directives; an invalid one changes nothing and says why.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let directives = directives.trim();
        if directives.is_empty() {
            return Err("no level given (for example level=info or level=access=warn,info)".into());
        }
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| format!("invalid log level {directives:?}: {e}"))?;
        (self.0.reload)(filter)?;
        *self
            .0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = directives.to_owned();
        Ok(())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.spans.take() {
            EXPORTING.store(false, std::sync::atomic::Ordering::Relaxed);
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "the last spans could not be exported");
            }
        }
        if let Some((batched, thread)) = self.writer.take() {
            batched.0.state().closed = true;
            batched.0.wake.notify_one();
            let _ = thread.join();
        }
    }
}

/// The share of successful connections or requests that get an access line
/// (`settings::ACCESS_LOG_SAMPLE_ENV`), in millionths; all by default.
static ACCESS_SAMPLE_PPM: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(1_000_000);

/// Sets the share of successful connections or requests that are logged
/// (0 to 1).
pub fn set_access_sample(share: f64) {
    let ppm = (share.clamp(0.0, 1.0) * 1e6).round() as u32;
    ACCESS_SAMPLE_PPM.store(ppm, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this successful connection or request gets its access line.
pub fn sample_access() -> bool {
    let ppm = ACCESS_SAMPLE_PPM.load(std::sync::atomic::Ordering::Relaxed);
    ppm >= 1_000_000 || fastrand::u32(0..1_000_000) < ppm
}

/// Installs the process-wide subscriber, with span export to `otlp` when
/// given. Safe to call more than once (later calls do nothing), so tests and
/// binaries can both call it. An exporter that cannot be set up is reported
/// on stderr and left out: logging goes on.
pub fn init(format: LogFormat, otlp: Option<&Otlp>) -> LogGuard {
    // RUST_LOG when it parses, else `info`; the directives are kept for
    // `/logging` to show.
    let (directives, filter) = std::env::var("RUST_LOG")
        .ok()
        .and_then(|d| EnvFilter::try_new(&d).ok().map(|filter| (d, filter)))
        .unwrap_or_else(|| ("info".to_owned(), EnvFilter::new("info")));
    let batched = Batched::new(io::stderr());
    let (filter, handle) = reload::Layer::new(filter);
    let lines = match format {
        LogFormat::Plain => fmt::layer().with_writer(batched.clone()).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(batched.clone())
            .boxed(),
    };
    let provider = otlp.and_then(|otlp| match span_exporter(otlp) {
        Ok(provider) => Some(provider),
        Err(error) => {
            eprintln!(
                "spans are not exported: cannot set up OTLP export to {}: {error}",
                otlp.endpoint
            );
            None
        }
    });
    let spans = provider.as_ref().map(|provider| {
        let tracer = provider.tracer("ambit");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter_fn(|meta| {
                meta.is_span()
                    && *meta.level() <= tracing::Level::DEBUG
                    && (meta.target().starts_with("ztunnel")
                        || meta.target().starts_with("waypoint"))
            }))
    });
    // try_init fails only when a subscriber is already installed: keep that one.
    let installed = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init()
        .is_ok();
    let reload: Reload = Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()));
    let thread = installed.then(|| batched.spawn_writer().ok()).flatten();
    let spans = provider.filter(|_| installed);
    if spans.is_some() {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    LogGuard {
        writer: thread.map(|thread| (batched, thread)),
        level: installed.then(|| LogLevel::new(directives, reload)),
        spans,
    }
}

/// The span pipeline to `otlp`: an OTLP/gRPC exporter whose connection runs
/// on a runtime of its own (one thread, `otlp-export`), apart from the data
/// path, behind the SDK's batching processor.
fn span_exporter(
    otlp: &Otlp,
) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, Box<dyn std::error::Error>> {
    use opentelemetry_otlp::WithExportConfig as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let exporter = runtime.block_on(async {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(otlp.endpoint.clone())
            .build()
    })?;
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(otlp.service.clone())
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Log lines gathered for one writer thread (see the module header).
#[derive(Clone)]
pub struct Batched(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Held while a batch is taken and written, so batches leave in order.
    output: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes out what is pending; `spare` is the buffer to swap in.
    fn write_out(&self, spare: &mut Vec<u8>) {
        let mut output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut self.state().pending, spare);
        if !spare.is_empty() {
            // Nowhere to report a failing stderr: the lines are lost.
            let _ = output.write_all(spare).and_then(|()| output.flush());
        }
        spare.clear();
    }
}

impl Batched {
    /// Lines for `output`, written once [`spawn_writer`](Self::spawn_writer)
    /// runs, or by the thread that logs past [`MAX_PENDING`].
    pub fn new(output: impl Write + Send + 'static) -> Self {
        Self(Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            output: Mutex::new(Box::new(output)),
        }))
    }

    /// Starts the thread that writes the lines out.
    ///
    /// # Errors
    ///
    /// When the thread cannot be created.
    pub fn spawn_writer(&self) -> io::Result<JoinHandle<()>> {
        let shared = self.0.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut spare = Vec::new();
                loop {
                    let closed = {
                        let mut state = shared.state();
                        while state.pending.is_empty() && !state.closed {
                            state = shared
                                .wake
                                .wait(state)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                        state.closed
                    };
                    shared.write_out(&mut spare);
                    if closed {
                        return;
                    }
                    std::thread::sleep(LINGER);
                }
            })
    }
}

impl Write for Batched {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let full = {
            let mut state = self.0.state();
            if state.pending.is_empty() {
                self.0.wake.notify_one();
            }
            state.pending.extend_from_slice(line);
            state.pending.len() >= MAX_PENDING
        };
        if full {
            self.0.write_out(&mut Vec::new());
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Batched;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A sink the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut sink = self.0.lock().unwrap();
            sink.0.extend_from_slice(bytes);
            sink.1 += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_written_together_leave_in_one_write_in_order() {
        let sink = Sink::default();
        let batched = Batched::new(sink.clone());
        let mut writer = batched.make_writer();
        // Logged while the writer thread is not there yet: they wait.
        for i in 0..100 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert_eq!(sink.0.lock().unwrap().1, 0, "nothing written per line");
        let thread = batched.spawn_writer().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().0.is_empty() {
            assert!(Instant::now() < deadline, "nothing written");
            std::thread::sleep(Duration::from_millis(1));
        }
        let (text, writes) = sink.0.lock().unwrap().clone();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(text).unwrap(), expected);
        assert_eq!(writes, 1, "one write for the hundred lines");
        // Closing writes what is left and ends the thread.
        writer.write_all(b"last\n").unwrap();
        let guard = LogGuard {
            writer: Some((batched, thread)),
            level: None,
            spans: None,
        };
        drop(guard);
        assert!(sink.0.lock().unwrap().0.ends_with(b"line 99\nlast\n"));
    }

    #[test]
    fn past_the_limit_the_logging_thread_writes_out_itself() {
        let sink = Sink::default();
        // No writer thread: only the limit gets lines out.
        let mut writer = Batched::new(sink.clone());
        let line = vec![b'x'; 1024];
        for _ in 0..(MAX_PENDING / line.len()) {
            writer.write_all(&line).unwrap();
        }
        let (text, writes) = sink.0.lock().unwrap().clone();
        assert_eq!(writes, 1);
        assert_eq!(text.len(), MAX_PENDING);
    }
}
