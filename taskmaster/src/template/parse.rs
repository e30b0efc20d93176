//! Compiling a template string into pieces, once, when a rule loads.

use crate::TemplateError;

/// The placeholders taskbus knows, for error messages.
pub(super) const KNOWN: &str =
    "{yyyy} {yy} {mm} {dd} {hh} {min} {ss} {TS} {SLUG} {HOUR_SLUG} {DAY_SLUG} \
{MONTH_SLUG} {host} {pod} {uuid} {meta:KEY} (names in any case; nothing after '#' is replaced)";

/// One piece of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Text(String),
    Year4,
    Year2,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Timestamp,
    HourSlug,
    DaySlug,
    MonthSlug,
    Host,
    Pod,
    Uuid,
    Meta(String),
}

/// Splits `template` into text and placeholders. `{name}` where `name` is a word (letters, digits,
/// `_`) or `meta:KEY` is a placeholder and must be known; other braces are text, so JSON survives.
pub(super) fn compile(template: &str) -> Result<Vec<Piece>, TemplateError> {
    let (head, tail) = match template.find('#') {
        Some(i) => template.split_at(i),
        None => (template, ""),
    };
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = head;
    let mut offset = 0;
    while let Some(open) = rest.find('{') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let candidate = after.find('}').map(|close| &after[..close]);
        match candidate.filter(|inner| looks_like_placeholder(inner)) {
            Some(inner) => {
                let at = offset + open;
                let piece = placeholder(template, inner, at)?;
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
                let used = open + inner.len() + 2;
                rest = &rest[used..];
                offset += used;
            }
            None => {
                text.push('{');
                rest = after;
                offset += open + 1;
            }
        }
    }
    text.push_str(rest);
    text.push_str(tail);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn looks_like_placeholder(inner: &str) -> bool {
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match inner.split_once(':') {
        Some((prefix, key)) => {
            prefix.eq_ignore_ascii_case("meta")
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        }
        None => word(inner),
    }
}

fn placeholder(template: &str, inner: &str, offset: usize) -> Result<Piece, TemplateError> {
    if let Some((_, key)) = inner.split_once(':') {
        if key.is_empty() {
            return Err(TemplateError::EmptyMetaKey {
                template: template.to_owned(),
                offset,
            });
        }
        return Ok(Piece::Meta(key.to_owned()));
    }
    Ok(match inner.to_ascii_lowercase().as_str() {
        "yyyy" => Piece::Year4,
        "yy" => Piece::Year2,
        "mm" => Piece::Month,
        "dd" => Piece::Day,
        "hh" => Piece::Hour,
        "min" => Piece::Minute,
        "ss" => Piece::Second,
        "ts" => Piece::Timestamp,
        "slug" | "hour_slug" => Piece::HourSlug,
        "day_slug" => Piece::DaySlug,
        "month_slug" => Piece::MonthSlug,
        "host" => Piece::Host,
        "pod" => Piece::Pod,
        "uuid" => Piece::Uuid,
        _ => {
            return Err(TemplateError::UnknownPlaceholder {
                template: template.to_owned(),
                placeholder: format!("{{{inner}}}"),
                offset,
                known: KNOWN,
            })
        }
    })
}
