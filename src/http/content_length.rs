//! `content-length` values for small answers, without an allocation per answer.
//!
//! axum gives every answer whose size it knows a `content-length` made into a new buffer
//! (`HeaderValue::from_str`): one allocation per request. An answer that already has the
//! header keeps it, so [`super::json_response`] takes it from a table of static values made
//! once, for bodies shorter than [`STATIC_BYTES_MAX`] (a produce answer is about 70 bytes);
//! a larger body is left to axum.

use std::sync::OnceLock;

use axum::http::HeaderValue;

/// Bodies shorter than this take a static `content-length` (about 24 KiB of table).
const STATIC_BYTES_MAX: usize = 1024;

/// The `content-length` of a body of `len` bytes, if the table has it; cloning a static
/// value copies a pointer, with no allocation and no reference count.
pub(super) fn static_content_length(len: usize) -> Option<HeaderValue> {
    static TABLE: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..STATIC_BYTES_MAX)
            .map(|n| HeaderValue::from_static(Box::leak(n.to_string().into_boxed_str())))
            .collect()
    });
    table.get(len).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_body_takes_its_length_from_the_table_and_a_large_one_does_not() {
        for len in [0, 1, 9, 10, 70, 999, STATIC_BYTES_MAX - 1] {
            let value = static_content_length(len).expect("in the table");
            assert_eq!(value.to_str().unwrap(), len.to_string());
        }
        assert_eq!(static_content_length(STATIC_BYTES_MAX), None);
    }
}
