//! The user's reference, `docs/reference.md`: it exists, has its sections, and the README and its
//! own links point where they should.

use std::path::PathBuf;

/// The sections the reference is made of, in order.
const SECTIONS: [&str; 9] = [
    "HTTP API",
    "Export options",
    "WebSocket events",
    "Progress",
    "Cancellation, failure and resume",
    "Project sources",
    "Storage",
    "Archive layout",
    "Metrics",
];

fn workspace_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The anchor GitHub gives a heading: lower case, spaces to dashes, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn the_reference_has_its_nine_sections_and_its_links_resolve() {
    let reference = workspace_file("docs/reference.md");
    let sections: Vec<&str> = reference
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .collect();
    assert_eq!(sections, SECTIONS);

    let anchors: Vec<String> = sections.iter().map(|s| anchor(s)).collect();
    let links: Vec<&str> = reference
        .split("](#")
        .skip(1)
        .map(|rest| rest.split(')').next().unwrap_or_default())
        .collect();
    assert!(!links.is_empty(), "the sections refer to each other");
    for link in links {
        assert!(
            anchors.iter().any(|a| a == link),
            "#{link} names no section of {anchors:?}"
        );
    }

    let readme = workspace_file("README.md");
    let documentation = readme
        .split("## Documentation")
        .nth(1)
        .expect("README has a Documentation section");
    assert!(
        documentation.contains("`docs/reference.md`"),
        "{documentation}"
    );
}
