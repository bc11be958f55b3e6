//! Log setup: logfmt (default) or JSON lines on stderr, via `tracing`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogLevel};

pub fn init(level: LogLevel, format: LogFormat) {
    // Our crate at the chosen level; dependencies one notch quieter unless debugging.
    let filter = EnvFilter::new(format!(
        "{lvl},vm_migration_exporter={lvl},hyper=warn,tower=warn",
        lvl = level.as_str()
    ));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Logfmt => registry
            .with(
                tracing_logfmt::builder()
                    .layer()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already initialised (tests): keep the existing subscriber.
    let _ = result;
}
