//! Conversions of single TOML values to Rust types; each error message is
//! the part after "key `name`: ".

use std::time::Duration;

use toml::de::DeValue;

use super::kind_of;
use super::raw::Value;

/// The longest duration accepted, in seconds.
const MAX_SECONDS: f64 = 1e9;

/// `"expected {what}, found {kind}"`.
fn mismatch(what: &str, value: Value<'_, '_>) -> String {
    format!("expected {what}, found {}", kind_of(value.de))
}

/// A string value; `what` describes what was expected.
pub fn string<'t>(value: Value<'t, '_>, what: &str) -> Result<&'t str, String> {
    match value.de {
        DeValue::String(s) => Ok(s.as_ref()),
        _ => Err(mismatch(what, value)),
    }
}

/// `true` or `false`.
pub fn boolean(value: Value<'_, '_>) -> Result<bool, String> {
    match value.de {
        DeValue::Boolean(b) => Ok(*b),
        _ => Err(mismatch("true or false", value)),
    }
}

/// One of a fixed set of strings.
pub fn choice<T: Copy>(
    value: Value<'_, '_>,
    options: &[(&str, T)],
) -> Result<T, String> {
    let names: Vec<String> = options
        .iter()
        .map(|(name, _)| format!("{name:?}"))
        .collect();
    let expected = match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    let text = string(value, &expected)?;
    options
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, v)| *v)
        .ok_or_else(|| format!("expected {expected}, found {text:?}"))
}

/// A number as written, integer or float, as `f64`.
fn number(value: Value<'_, '_>) -> Option<f64> {
    match value.de {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
            .ok()
            .map(|n| n as f64),
        DeValue::Float(f) => f.as_str().parse().ok(),
        _ => None,
    }
}

/// A number of seconds, at least 0; `what` is the expected value in
/// the message for a negative one.
fn seconds(value: Value<'_, '_>, what: &str) -> Result<Duration, String> {
    let Some(secs) = number(value) else {
        return Err(mismatch("a number of seconds", value));
    };
    if secs.is_nan() || secs < 0.0 {
        return Err(format!("expected {what}, found {}", value.text));
    }
    if secs > MAX_SECONDS {
        // Far beyond any real use, and safe to add to an `Instant`.
        return Err(format!(
            "{} seconds is too long; at most {MAX_SECONDS} (about 31 \
             years)",
            value.text
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration of at least 0 seconds, where 0 means `None` (no limit,
/// or never).
pub fn non_negative_seconds(
    value: Value<'_, '_>,
) -> Result<Option<Duration>, String> {
    let d = seconds(value, "a number of seconds (0 or more)")?;
    Ok((!d.is_zero()).then_some(d))
}

/// A duration of more than 0 seconds.
pub fn positive_seconds(value: Value<'_, '_>) -> Result<Duration, String> {
    const WHAT: &str = "a number of seconds more than 0";
    match seconds(value, WHAT)? {
        d if d.is_zero() => {
            Err(format!("expected {WHAT}, found {}", value.text))
        }
        d => Ok(d),
    }
}

/// A limit: a whole number, 0 meaning no limit; `what` is the expected
/// value for messages.
fn limit(value: Value<'_, '_>, what: &str) -> Result<Option<usize>, String> {
    let DeValue::Integer(i) = value.de else {
        return Err(mismatch(what, value));
    };
    match usize::from_str_radix(i.as_str(), i.radix()) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(format!("expected {what}, found {}", value.text)),
    }
}

/// `max_connections`: a whole number, 0 meaning no limit.
pub fn connections(value: Value<'_, '_>) -> Result<Option<usize>, String> {
    limit(value, "a whole number of connections (0 for no limit)")
}

/// `max_handshakes`: a whole number, 0 meaning no limit.
pub fn handshakes(value: Value<'_, '_>) -> Result<Option<usize>, String> {
    limit(value, "a whole number of handshakes (0 for no limit)")
}

/// `source_mode`: permission bits as a string of 3 or 4 octal digits
/// (`"660"`, `"0660"`), at most `0o777`. A string, as in `chmod`, because
/// a TOML integer with a leading 0 is not valid and `0o660` is easy to
/// get wrong as `660`.
pub fn permissions(value: Value<'_, '_>) -> Result<u32, String> {
    let text = string(value, "octal digits in quotes, such as \"0660\"")?;
    let octal = text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let bad = || {
        format!(
            "expected 3 or 4 octal digits, such as \"0660\", found {text:?}"
        )
    };
    if !octal || !(3..=4).contains(&text.len()) {
        return Err(bad());
    }
    let mode = u32::from_str_radix(text, 8).map_err(|_| bad())?;
    if mode > 0o777 {
        return Err(format!(
            "{text:?} sets more than the permission bits: at most \"0777\""
        ));
    }
    Ok(mode)
}

/// `source_group`: a group name, looked up now (in /etc/group or
/// whatever the system's name service uses), or a numeric gid, as a
/// string of digits or an integer, taken as it is (as `chown` takes
/// one), whether or not a group has it.
pub fn group(value: Value<'_, '_>) -> Result<u32, String> {
    const WHAT: &str = "a group name or numeric gid";
    let out_of_range = || {
        format!(
            "expected a group name or a gid from 0 to {}, found {}",
            u32::MAX - 1,
            value.text
        )
    };
    // `(gid_t)-1`, u32::MAX, means "leave the group as it is" to chown.
    let gid = |n: u32| {
        if n == u32::MAX {
            Err(out_of_range())
        } else {
            Ok(n)
        }
    };
    let name = match value.de {
        DeValue::Integer(i) => {
            return u32::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| out_of_range())
                .and_then(gid);
        }
        DeValue::String(s) => s.as_ref(),
        _ => return Err(mismatch(WHAT, value)),
    };
    if name.is_empty() {
        return Err("the group name is empty".to_owned());
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return name.parse().map_err(|_| out_of_range()).and_then(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group `{name}` on this system")),
        Err(e) => Err(format!("cannot look up group `{name}`: {e}")),
    }
}
