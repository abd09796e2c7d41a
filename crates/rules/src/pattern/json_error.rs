//! Parse errors of pattern text in the words AWS uses (its JSON parser is Jackson's), so
//! `Unrecognized token 'this'` reads the same here as in the AWS console.

/// Jackson's message for the first syntax error serde_json found in `text`.
pub(super) fn jackson_message(text: &str, error: &serde_json::Error) -> String {
    if error.is_eof() {
        return "Unexpected end-of-input".to_string();
    }
    let rest = at(text, error.line(), error.column());
    let Some(c) = rest.chars().next() else {
        return "Unexpected end-of-input".to_string();
    };
    if c.is_alphabetic() {
        let token: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        return format!(
            "Unrecognized token '{token}': was expecting (JSON String, Number, Array, Object or token 'null', 'true' or 'false')"
        );
    }
    let expecting = if error.to_string().starts_with("key must be a string") {
        "was expecting double-quote to start field name"
    } else {
        "expected a valid value (JSON String, Number, Array, Object or token 'null', 'true' or 'false')"
    };
    format!(
        "Unexpected character ('{c}' (code {})): {expecting}",
        c as u32
    )
}

/// The text from a 1-based line and column on (serde_json counts columns in bytes), from
/// the start of the word there: serde_json stops inside a bad literal (`t` of `this` is
/// taken for the start of `true`), Jackson names the whole word.
fn at(text: &str, line: usize, column: usize) -> &str {
    let start_of_line: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let mut offset = (start_of_line + column.saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let word_start = text[..offset]
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
        .last()
        .map_or(offset, |(i, _)| i);
    text.get(word_start..).unwrap_or("")
}
