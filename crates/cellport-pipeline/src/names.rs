//! Archive entry names: sanitized, and unique per export compared case-insensitively.
//!
//! An image's stem names its image, visualization and label files alike, so a YOLO label
//! pairs with its image by name even after a clash was resolved with `_2`.

use std::collections::HashSet;

/// Longest stem kept, in bytes; longer names are cut at a character boundary.
const MAX_STEM_BYTES: usize = 180;

/// The entry names of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntryName {
    /// Unique within the export, e.g. `cells_2`.
    pub stem: String,
    /// The extension as given (case kept), with its dot, or empty, e.g. `.TIF`.
    pub extension: String,
}

impl ImageEntryName {
    /// The name under `images/`.
    pub fn file_name(&self) -> String {
        format!("{}{}", self.stem, self.extension)
    }
}

/// Keeps only the last path component and drops what a ZIP reader could misread:
/// control characters, separators, `..`, leading dots and surrounding spaces.
pub fn sanitize_file_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| {
            if matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim();
    if cleaned.is_empty() {
        "image".to_owned()
    } else {
        cleaned.to_owned()
    }
}

fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 && name.len() - dot <= 6 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    }
}

fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Hands out unique stems in project order: the first image keeps its stem, later clashes get `_2`, `_3`, …
#[derive(Debug, Default)]
pub struct StemAllocator {
    taken: HashSet<String>,
}

impl StemAllocator {
    pub fn assign(&mut self, original_name: &str) -> ImageEntryName {
        let clean = sanitize_file_name(original_name);
        let (stem, ext) = split_extension(&clean);
        let stem = truncate_at_char(stem, MAX_STEM_BYTES).to_owned();
        // The name is kept as given: a user looking for `Plate 3.TIF` finds `Plate 3.TIF`.
        let extension = ext.to_owned();
        let mut candidate = stem.clone();
        let mut n = 2;
        while !self.taken.insert(candidate.to_lowercase()) {
            candidate = format!("{stem}_{n}");
            n += 1;
        }
        ImageEntryName {
            stem: candidate,
            extension,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize() {
        let check = |raw: &str, want: &str| assert_eq!(sanitize_file_name(raw), want, "{raw:?}");
        check("cells.png", "cells.png");
        check("/etc/passwd", "passwd");
        check("..\\..\\win.ini", "win.ini");
        check("../../", "image");
        check("..", "image");
        check(".hidden.png", "hidden.png");
        check("a\u{0}b\nc.tif", "abc.tif");
        check("  spaced .jpg ", "spaced .jpg");
        check("what?.png", "what_.png");
    }

    #[test]
    fn stems_are_unique_case_insensitively_in_order() {
        let mut alloc = StemAllocator::default();
        let names: Vec<String> = ["a.png", "A.PNG", "a.tif", "a_2.png", "dir/a.png", "b"]
            .iter()
            .map(|n| alloc.assign(n).file_name())
            .collect();
        assert_eq!(
            names,
            ["a.png", "A_2.PNG", "a_3.tif", "a_2_2.png", "a_4.png", "b"]
        );
    }

    #[test]
    fn names_keep_their_case() {
        let mut alloc = StemAllocator::default();
        let check = |alloc: &mut StemAllocator, raw: &str, want: &str| {
            assert_eq!(alloc.assign(raw).file_name(), want, "{raw:?}")
        };
        check(&mut alloc, "Plate 3.TIF", "Plate 3.TIF");
        check(&mut alloc, "plate 3.tif", "plate 3_2.tif");
        check(&mut alloc, "Scan.JPEG", "Scan.JPEG");
        check(&mut alloc, "noext", "noext");
    }
}
