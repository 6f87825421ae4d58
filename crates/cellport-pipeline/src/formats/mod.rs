//! Annotation formats: COCO, YOLO and the JSON segmentation file (docs/reference.md,
//! "Archive layout").
//!
//! Each format is a pure function of one image's [`crate::geometry::PreparedImage`], plus a small
//! streaming writer for the formats that put every image in one document, so an export never
//! holds a whole project's annotations at once.

pub mod coco;
pub mod json;
pub mod yolo;
