//! Structured logging through the host.
//!
//! Use the macros ([`info!`](crate::info), [`warn!`](crate::warn), …). Each takes
//! `format!` arguments, optionally preceded by `{ "key" => value, … },` fields. The host
//! redacts every line (PII detectors and the task's known PII values) and caps the volume
//! per attempt, so a log line is never the place for a customer's data.
//!
//! Standard output and standard error are captured too (capped and redacted), but carry
//! no level or fields: prefer the macros.

use crate::bindings::stepbox::step::log as wit;

pub use wit::Level;

/// Write one log line. `fields` are key/value pairs attached to the line.
pub fn write(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wit::write(level, message, &fields);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:expr, { $($key:literal => $value:expr),* $(,)? }, $($fmt:tt)+) => {
        $crate::log::write(
            $level,
            &::std::format!($($fmt)+),
            &[$(($key, &::std::string::ToString::to_string(&$value))),*],
        )
    };
    ($level:expr, $($fmt:tt)+) => {
        $crate::log::write($level, &::std::format!($($fmt)+), &[])
    };
}

/// Log at trace level: `trace!("msg {}", x)` or `trace!({ "k" => v }, "msg")`.
#[macro_export]
macro_rules! trace {
    ($($t:tt)+) => { $crate::__log!($crate::log::Level::Trace, $($t)+) };
}

/// Log at debug level: `debug!("msg {}", x)` or `debug!({ "k" => v }, "msg")`.
#[macro_export]
macro_rules! debug {
    ($($t:tt)+) => { $crate::__log!($crate::log::Level::Debug, $($t)+) };
}

/// Log at info level: `info!("msg {}", x)` or `info!({ "k" => v }, "msg")`.
#[macro_export]
macro_rules! info {
    ($($t:tt)+) => { $crate::__log!($crate::log::Level::Info, $($t)+) };
}

/// Log at warn level: `warn!("msg {}", x)` or `warn!({ "k" => v }, "msg")`.
#[macro_export]
macro_rules! warn {
    ($($t:tt)+) => { $crate::__log!($crate::log::Level::Warn, $($t)+) };
}

/// Log at error level: `error!("msg {}", x)` or `error!({ "k" => v }, "msg")`.
#[macro_export]
macro_rules! error {
    ($($t:tt)+) => { $crate::__log!($crate::log::Level::Error, $($t)+) };
}
