//! `.env` files: `KEY=VALUE` lines, as foreman and docker read them.
//! `#` comments, blank lines and a leading `export ` are allowed; a value may
//! be 'single-quoted' (literal) or "double-quoted" (with \n, \t, \" and \\).

use std::ffi::OsString;
use std::path::Path;

use crate::error::Error;

pub fn load_env_file(path: &Path) -> Result<Vec<(OsString, OsString)>, Error> {
    let text = super::read_input_file(path, "env file")?;
    let text = String::from_utf8_lossy(&text);
    parse(&text).map_err(|(line, msg)| Error::usage(format!("{}:{line}: {msg}", path.display())))
}

pub(super) fn parse(text: &str) -> Result<Vec<(OsString, OsString)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in super::strip_bom(text).lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, format!("expected KEY=VALUE, found '{line}'")));
        };
        let key = key.trim();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((i + 1, format!("invalid variable name '{key}'")));
        }
        let value = unquote(value.trim()).map_err(|m| (i + 1, m))?;
        if value.contains('\0') {
            return Err((i + 1, format!("the value of {key} contains a NUL byte")));
        }
        out.push((OsString::from(key), OsString::from(value)));
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<String, String> {
    if let Some(rest) = v.strip_prefix('\'') {
        return rest
            .strip_suffix('\'')
            .map(str::to_string)
            .ok_or_else(|| "unterminated single quote".to_string());
    }
    if let Some(rest) = v.strip_prefix('"') {
        let body = rest
            .strip_suffix('"')
            .ok_or_else(|| "unterminated double quote".to_string())?;
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        }
        return Ok(out);
    }
    // Unquoted: a ` #` starts a comment.
    Ok(v.split(" #").next().unwrap_or("").trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect()
    }

    #[test]
    fn reads_plain_quoted_and_exported_values() {
        let got = kv("# c\nA=1\nexport B = two words # note\nC='x y'\nD=\"a\\nb\"\n\nE=\n");
        let want = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "x y"),
            ("D", "a\nb"),
            ("E", ""),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        assert_eq!(parse("A=1\njunk\n").unwrap_err().0, 2);
        assert_eq!(parse("1A=x").unwrap_err().0, 1);
        assert_eq!(parse("A='x").unwrap_err().0, 1);
        assert_eq!(parse("A=1\nB=x\0y").unwrap_err().0, 2);
    }
}
