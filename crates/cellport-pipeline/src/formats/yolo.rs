//! YOLO segmentation labels (`annotations/yolo/labels/<stem>.txt`) and `data.yaml`, in the
//! Ultralytics format: one line per cell, `0 x1 y1 x2 y2 …`, coordinates divided by the
//! image's width and height.

use std::fmt::Write as _;

use crate::geometry::PreparedImage;

/// The label file of one image: one newline-terminated line per cell, in Polygon ID order,
/// holes and orphan holes left out (the format has no holes).
///
/// Coordinates are clamped to [0, 1], since Ultralytics rejects labels outside the image, and
/// written with 6 decimals (a millionth of the image, finer than any pixel of a real image).
/// An image without cells, or with a zero width or height that nothing can be normalised by,
/// gets an empty file, which Ultralytics reads as a background image.
pub fn yolo_label(prepared: &PreparedImage, width: u32, height: u32) -> String {
    let mut label = String::new();
    if width == 0 || height == 0 {
        return label;
    }
    let (w, h) = (f64::from(width), f64::from(height));
    for cell in &prepared.cells {
        label.push('0');
        for p in &cell.external {
            // Writing into a String cannot fail.
            let _ = write!(
                label,
                " {:.6} {:.6}",
                (p.x / w).clamp(0.0, 1.0),
                (p.y / h).clamp(0.0, 1.0)
            );
        }
        label.push('\n');
    }
    label
}

/// `annotations/yolo/data.yaml`: one class, 0 = `cell`.
///
/// Ultralytics finds an image's label by swapping `images` for `labels` in its path and resolves
/// `train`/`val` against the directory of this file when `path` is absent, so the dataset root is
/// `annotations/yolo/`: its `labels/` is there, and the archive's `images/` folder is copied or
/// linked next to it, as the comment in the file says. Train and val are the same images because
/// an export has no split.
pub fn yolo_data_yaml() -> String {
    "# Cellport export: Ultralytics YOLO segmentation dataset.\n\
     # Labels are in labels/ next to this file. Copy or link the archive's images/ folder next to\n\
     # it (annotations/yolo/images) so that each label pairs with its image by name.\n\
     train: images\n\
     val: images\n\
     nc: 1\n\
     names:\n  0: cell\n"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use cellport_core::Point;

    use super::*;
    use crate::geometry::CellPolygon;
    use crate::geometry::tests::{pts, rect};

    fn prepared(externals: Vec<Vec<Point>>) -> PreparedImage {
        PreparedImage {
            cells: externals
                .into_iter()
                .zip(1..)
                .map(|(external, polygon_id)| CellPolygon {
                    polygon_id,
                    external,
                    // Holes never reach a YOLO label.
                    holes: vec![rect(4.0, 4.0, 5.0, 5.0)],
                })
                .collect(),
            orphan_holes: vec![rect(90.0, 90.0, 91.0, 91.0)],
            warnings: Vec::new(),
        }
    }

    #[test]
    fn labels() {
        let check = |externals: Vec<Vec<Point>>, width: u32, height: u32, expected: &str| {
            assert_eq!(
                yolo_label(&prepared(externals.clone()), width, height),
                expected,
                "{externals:?}"
            );
        };
        check(Vec::new(), 100, 50, "");
        check(
            vec![rect(10.0, 5.0, 50.0, 25.0)],
            100,
            50,
            "0 0.100000 0.100000 0.500000 0.100000 0.500000 0.500000 0.100000 0.500000\n",
        );
        // Two cells, two lines; points outside the image are clamped to its edge.
        check(
            vec![
                pts(&[(0.0, 0.0), (3.0, 0.0), (0.0, 3.0)]),
                pts(&[(-5.0, 1.5), (7.0, 1.5), (7.0, 9.0)]),
            ],
            6,
            3,
            "0 0.000000 0.000000 0.500000 0.000000 0.000000 1.000000\n\
             0 0.000000 0.500000 1.000000 0.500000 1.000000 1.000000\n",
        );
        check(vec![rect(1.0, 1.0, 2.0, 2.0)], 0, 10, "");
        check(vec![rect(1.0, 1.0, 2.0, 2.0)], 10, 0, "");
        // Full image precision survives: 1 px of a 100 000 px wide image.
        check(
            vec![pts(&[(1.0, 0.0), (2.0, 0.0), (2.0, 1.0)])],
            100_000,
            1,
            "0 0.000010 0.000000 0.000020 0.000000 0.000020 1.000000\n",
        );
    }

    #[test]
    fn data_yaml_names_class_zero_cell() {
        let yaml = yolo_data_yaml();
        let lines: Vec<&str> = yaml.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            vec![
                "train: images",
                "val: images",
                "nc: 1",
                "names:",
                "  0: cell"
            ]
        );
        assert!(yaml.ends_with('\n'));
    }
}
