//! Logs and traces: one `tracing` subscriber for the process.
//!
//! Logs go to stderr as text or JSON lines, filtered by `SWITCHYARD_LOG`
//! (`EnvFilter` syntax, default `info`). Every line inside a request carries
//! its `request_id` through the request span.
//!
//! Built with the `otel` feature, the same spans are also exported as
//! OpenTelemetry traces over OTLP/HTTP when the standard variables ask for it:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `http/json`),
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME` (default `switchyard`) and
//! `OTEL_RESOURCE_ATTRIBUTES`. Spans are batched and sent from a thread of
//! their own; [`Telemetry`] flushes them when dropped.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Keeps the trace exporter alive; dropping it sends what is still buffered.
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("switchyard: flushing traces: {err}");
        }
    }
}

/// Whether the environment asks for trace export.
fn otlp_requested() -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Installs the process's subscriber. An exporter that cannot be built is
/// reported on stderr and the process goes on with logs only.
pub fn init(json: bool) -> Telemetry {
    let filter = EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log collected from a pipe or
    // a file (a container's, a service manager's) gets plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))] // the exporter's layer joins with `otel`
    let mut layers: Vec<BoxedLayer> = vec![if json { fmt.json().boxed() } else { fmt.boxed() }];
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))] // set only with `otel`
    let mut telemetry = Telemetry {
        #[cfg(feature = "otel")]
        provider: None,
    };
    let mut problem = None;
    if otlp_requested() {
        #[cfg(feature = "otel")]
        match otel::layer() {
            Ok((layer, provider)) => {
                layers.push(layer);
                telemetry.provider = Some(provider);
            }
            Err(err) => problem = Some(format!("OpenTelemetry export is off: {err}")),
        }
        #[cfg(not(feature = "otel"))]
        {
            problem = Some(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but this build has no OpenTelemetry export \
                 (build with `--features otel`)"
                    .to_string(),
            );
        }
    }
    tracing_subscriber::registry().with(layers).with(filter).init();
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    telemetry
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    use super::BoxedLayer;

    pub(super) fn layer() -> Result<(BoxedLayer, SdkTracerProvider), String> {
        let protocol = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            Err(_) | Ok("") | Ok("http/protobuf") => Protocol::HttpBinary,
            Ok("http/json") => Protocol::HttpJson,
            Ok(other) => {
                return Err(format!(
                    "OTLP protocol {other:?} is not supported (use http/protobuf or http/json)"
                ));
            }
        };
        // The exporter's HTTP client needs a TLS provider even for http:// endpoints.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
            .map_err(|err| err.to_string())?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("switchyard");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                resource
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("switchyard");
        Ok((tracing_opentelemetry::layer().with_tracer(tracer).boxed(), provider))
    }
}
