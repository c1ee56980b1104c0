//! What commands print: each report is one struct, shown as text (its `Display`) or as one JSON
//! object (`--json`, its `Serialize`).

use std::fmt;

use serde::Serialize;

/// A command's result, printable both ways.
pub trait Report: Serialize + fmt::Display {}

impl<T: Serialize + fmt::Display> Report for T {}

/// Prints `report` as text or as one line of JSON.
pub fn print(report: &impl Report, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("error: cannot print the report as JSON: {e}"),
        }
    } else {
        println!("{report}");
    }
}

/// Prints an error: `error: …` on standard error, or with `--json` one JSON object
/// `{"error": "…"}` on standard output, where the reports go, so that a program reading them
/// reads the failures too.
pub fn print_error(error: &anyhow::Error, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "error": format!("{error:#}") }));
    } else {
        eprintln!("error: {error:#}");
    }
}

/// Rows of `label  value`, labels padded to one width: how reports show themselves as tables.
pub fn table(f: &mut fmt::Formatter<'_>, rows: &[(&str, String)]) -> fmt::Result {
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        + 3;
    for (i, (label, value)) in rows.iter().enumerate() {
        if i > 0 {
            writeln!(f)?;
        }
        write!(f, "{label:<width$}{value}")?;
    }
    Ok(())
}
