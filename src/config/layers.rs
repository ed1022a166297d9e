//! The layering: a TOML file merged over the defaults, then `FLASHSALE__SECTION__KEY`
//! environment variables set one value each.
//!
//! The layering is ours (some sixty lines), not figment's or config's. figment's `Env`
//! reads only the process environment, so `load_with_env` would need a provider of our
//! own, and it brings a second TOML parser and a proc-macro crate. config takes injected
//! pairs and is light, but reads an override as a plain string: a list given as TOML
//! (`FLASHSALE__SHARDS__URLS='["…"]'`, as README documents) is refused, and with number
//! parsing on, a string setting such as `"007"` becomes `"7"`. Either would replace
//! little code and change what users see.

use std::path::Path;

use super::ConfigError;

/// The TOML table of a config file.
pub(super) fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    text.parse().map_err(|e| ConfigError::Parse {
        path: shown,
        source: Box::new(e),
    })
}

/// Sets every `FLASHSALE__SECTION__KEY` of `env` in `tree`; other variables are ignored.
pub(super) fn apply_env(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("FLASHSALE__") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        set_path(tree, &path, parse_env_value(&value)).map_err(|message| ConfigError::Env {
            name: name.clone(),
            message,
        })?;
    }
    Ok(())
}

pub(super) fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// An override is read as a TOML value when it parses as one (numbers, booleans,
/// arrays), and as a plain string otherwise.
fn parse_env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [leaf] => {
            if leaf.is_empty() {
                return Err("empty key".into());
            }
            // A string setting stays a string even when the text looks like a number.
            let value = match (tree.get(leaf), value) {
                (Some(toml::Value::String(_)), v) if !v.is_str() => {
                    toml::Value::String(toml_text(&v))
                }
                (_, v) => v,
            };
            tree.insert(leaf.clone(), value);
            Ok(())
        }
        [section, rest @ ..] => match tree
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => set_path(t, rest, value),
            _ => Err(format!("{section} is not a section")),
        },
    }
}

/// A value the settings refuse, with the setting it was given for when toml names it
/// (`telemetry.otlp_endpoint: "x" is not an http:// or https:// URL`).
pub(super) fn with_setting(e: &toml::de::Error) -> String {
    // toml names the setting only in its display, on a line of its own: in `a.b`.
    let shown = e.to_string();
    let setting = shown
        .lines()
        .find_map(|line| line.strip_prefix("in `")?.strip_suffix('`'));
    match setting {
        Some(setting) => format!("{setting}: {}", e.message()),
        None => e.message().to_string(),
    }
}

/// A TOML value as text: a string as itself, anything else as TOML writes it.
pub(super) fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
