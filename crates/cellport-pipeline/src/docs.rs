//! The archive's `documentation/` files: what is inside, and how every metric is computed.

use std::fmt::Write as _;

use cellport_core::ExportOptions;
use cellport_core::options::{AnnotationFormat, MetricsFormat};

/// `documentation/README.md`: the archive's contents, units and options.
pub fn readme(
    project_name: &str,
    image_count: usize,
    options: &ExportOptions,
    warnings: usize,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Export of \"{project_name}\"\n");
    let _ = writeln!(
        md,
        "{image_count} image(s). Images keep the project's order in every file.\n"
    );
    md.push_str("## Contents\n\n");
    if options.include_original_images {
        md.push_str("* `images/`: the original image files, unchanged. Names are unique within the export; a clash gets `_2`, `_3`, ….\n");
    }
    if options.include_visualizations {
        md.push_str("* `visualizations/<name>_viz.png`: each image with its cells drawn over it, numbered by Polygon ID.\n");
    }
    for format in &options.annotation_formats {
        md.push_str(match format {
            AnnotationFormat::Coco => "* `annotations/coco/annotations.json`: COCO instance segmentation, one category `cell`; cells with holes as RLE.\n",
            AnnotationFormat::Yolo => "* `annotations/yolo/`: Ultralytics YOLO segmentation labels (`labels/<name>.txt`) and `data.yaml`.\n",
            AnnotationFormat::Json => "* `annotations/json/segmentation_data.json`: every polygon with its type and, for holes, its parent cell.\n",
        });
    }
    for format in &options.metrics_formats {
        md.push_str(match format {
            MetricsFormat::Excel => {
                "* `metrics/metrics.xlsx`: sheets \"Polygon Metrics\" and \"Summary\".\n"
            }
            MetricsFormat::Csv => "* `metrics/metrics.csv`: one row per cell, full precision.\n",
            MetricsFormat::Json => {
                "* `metrics/metrics.json`: the same rows and the summary, full precision.\n"
            }
        });
    }
    md.push_str("* `documentation/`: this file, `metadata.json` (export details) and `metrics_guide.md` (how each metric is computed).\n\n");
    md.push_str("## Units\n\n");
    match options.pixel_to_micrometer_scale {
        Some(s) => {
            let _ = writeln!(md, "Metrics are in micrometres: {s} µm per pixel (lengths × {s}, areas × {s}²). Annotation coordinates stay in pixels.\n");
        }
        None => md.push_str("Metrics are in pixels (px, px²); no scale was given. Annotation coordinates are in pixels.\n\n"),
    }
    md.push_str("## Notes\n\n");
    md.push_str("* A polygon with fewer than 3 distinct points, a non-finite coordinate or zero area is left out of every file.\n");
    md.push_str("* A hole belongs to the cell that contains all its vertices (the smallest such cell); a hole inside no cell stays only in the JSON, with `parentId: null`.\n");
    md.push_str("* An unreadable image keeps its original file, annotations and metrics, and has no visualization.\n");
    if warnings > 0 {
        let _ = writeln!(
            md,
            "* This export has {warnings} warning(s): see `metadata.json`."
        );
    }
    md
}

/// `documentation/metrics_guide.md`: the formulas exactly as implemented.
pub fn metrics_guide(scale: Option<f64>) -> String {
    let units = match scale {
        Some(s) => {
            format!("Lengths are in µm and areas in µm² ({s} µm per pixel); ratios have no unit.")
        }
        None => "Lengths are in px and areas in px²; ratios have no unit.".to_owned(),
    };
    format!(
        "# Metrics guide\n\n\
Metrics are computed per cell (external polygon) with its holes subtracted. {units}\n\
Rows are in image order, then Polygon ID (1-based per image, in the stored order of the image's valid cells).\n\n\
| metric | definition |\n| --- | --- |\n\
| Area | shoelace area of the cell minus its holes' areas |\n\
| Perimeter | length of the closed outline of the cell |\n\
| Perimeter with Holes | Perimeter plus the holes' perimeters |\n\
| Equivalent Diameter | √(4·Area/π) |\n\
| Circularity | min(1, 4π·Area / PerimeterWithHoles²) |\n\
| Feret Diameter Max | largest distance between two vertices (convex-hull diameter, rotating calipers) |\n\
| Feret Diameter Min | smallest caliper width of the convex hull |\n\
| Feret Diameter Orthogonal | caliper width perpendicular to the Feret Max direction |\n\
| Feret Aspect Ratio | Feret Max / Feret Min |\n\
| Major / Minor Axis Length | 4·√λ₁ and 4·√λ₂, the eigenvalues of the normalised second central moments of the cell minus its holes, computed exactly by Green's theorem |\n\
| Bounding Box Width / Height | axis-aligned extent of the cell's outline |\n\
| Extent | Area / (Width·Height) |\n\
| Compactness | PerimeterWithHoles² / (4π·Area) |\n\
| Convexity | convex-hull perimeter / Perimeter |\n\
| Solidity | Area / convex-hull area |\n\
| Sphericity | π·EquivalentDiameter / PerimeterWithHoles |\n\n\
A value that is undefined (for example a ratio over a zero area when holes cancel a cell) is left empty in the CSV and the workbook and is `null` in JSON.\n\n\
The \"Summary\" sheet and the JSON `summary` give the count of cells, the mean, minimum and maximum Area, and the means of \
Perimeter, Circularity, Compactness, Extent, Solidity and Sphericity.\n"
    )
}
