//! What commands print: the reports and their printing live in `vq-report` (no LibTorch), so
//! that the programs reading the JSON share the types.

pub use vq_report::{print, table, Report};

/// Prints an error with its causes: `error: …` on standard error, or with `--json` one JSON
/// object `{"error": "…"}` on standard output, where the reports go.
pub fn print_error(error: &anyhow::Error, json: bool) {
    vq_report::print_error(&format!("{error:#}"), json);
}
