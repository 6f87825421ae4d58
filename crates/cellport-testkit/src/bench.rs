//! What the benches share: their parameters.

use std::collections::HashMap;

use anyhow::Context;

/// A bench's parameters: `--name value` (or `--name=value`) after `--`, else the variable
/// `CELLPORT_BENCH_NAME`, else the default.
pub struct BenchParams {
    args: HashMap<String, String>,
}

impl BenchParams {
    pub fn from_env() -> BenchParams {
        let mut args = HashMap::new();
        let mut raw = std::env::args().skip(1).peekable();
        while let Some(arg) = raw.next() {
            // `cargo bench` passes `--bench` to every bench binary.
            let Some(name) = arg.strip_prefix("--").filter(|n| *n != "bench") else {
                continue;
            };
            match name.split_once('=') {
                Some((name, value)) => {
                    args.insert(name.to_owned(), value.to_owned());
                }
                None => {
                    let value = raw.next_if(|v| !v.starts_with("--")).unwrap_or_default();
                    args.insert(name.to_owned(), value);
                }
            }
        }
        BenchParams { args }
    }

    pub fn text(&self, name: &str, default: &str) -> String {
        let variable = format!(
            "CELLPORT_BENCH_{}",
            name.to_ascii_uppercase().replace('-', "_")
        );
        self.args
            .get(name)
            .cloned()
            .or_else(|| std::env::var(variable).ok())
            .unwrap_or_else(|| default.to_owned())
    }

    pub fn number(&self, name: &str, default: u64) -> anyhow::Result<u64> {
        let text = self.text(name, &default.to_string());
        text.parse()
            .with_context(|| format!("--{name} {text:?} is not a number"))
    }
}
