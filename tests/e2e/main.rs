//! End-to-end tests of the sandbox: real components built from `example-steps/`, the real
//! wasmtime sandbox, real HTTP over a socket on 127.0.0.1, and the `stepbox` binary.

mod api;
mod api_catalog;
mod api_matrix;
mod api_openapi;
mod api_tasks;
mod audit_trail;
mod cli;
mod control;
mod engine;
mod gdpr;
mod hostile;
mod http_defences;
mod loading;
mod ops;
mod refund;
mod retention;
mod secrets;
mod serve;
mod support;
mod tls;
