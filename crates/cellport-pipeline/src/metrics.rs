//! Per-polygon metrics (docs/reference.md, "Metrics") and their CSV, JSON and XLSX files.
//!
//! [`measure`] computes one external polygon's metrics in pixels, with its holes subtracted.
//! The writers scale them by `pixelToMicrometerScale` (lengths × s, areas × s², ratios as they
//! are) and take rows one at a time, so an export with millions of polygons never holds them all.
//!
//! A metric whose definition divides by zero (an area that its holes cancel completely) is not a
//! number: the CSV leaves the cell empty, the JSON writes `null`, the XLSX leaves the cell blank,
//! and the summary skips it.

use std::f64::consts::PI;
use std::io::{self, Write};
use std::path::Path;
use std::sync::LazyLock;

use cellport_core::{ImageId, Point};
use rust_xlsxwriter::{ColNum, Format, RowNum, Workbook, Worksheet, XlsxError};
use serde::{Deserialize, Serialize};

use crate::geometry::{
    BoundingBox, CellPolygon, PreparedImage, convex_hull, hull_diameter, hull_min_width,
    hull_width_across, perimeter, signed_area,
};

/// The metrics of one external polygon minus its holes, in pixels unless [`PolygonMetrics::scaled`].
/// Serialized field names are the JSON keys of `metrics.json` (camelCase of the metrics columns).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolygonMetrics {
    pub area: f64,
    pub perimeter: f64,
    pub perimeter_with_holes: f64,
    pub equivalent_diameter: f64,
    pub circularity: f64,
    pub feret_diameter_max: f64,
    pub feret_diameter_min: f64,
    pub feret_diameter_orthogonal: f64,
    pub feret_aspect_ratio: f64,
    pub major_axis_length: f64,
    pub minor_axis_length: f64,
    pub bounding_box_width: f64,
    pub bounding_box_height: f64,
    pub extent: f64,
    pub compactness: f64,
    pub convexity: f64,
    pub solidity: f64,
    pub sphericity: f64,
}

/// One line of the metrics files. `metrics` are in pixels; the writers apply the scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// The image's entry name in `images/`.
    pub image_name: String,
    pub image_id: ImageId,
    pub polygon_id: u32,
    pub metrics: PolygonMetrics,
}

/// Computes the metrics of docs/reference.md ("Metrics") for one cell. Ring orientation does not
/// matter: every area is taken as an absolute value and the moments are normalised per ring before
/// the holes are subtracted.
pub fn measure(cell: &CellPolygon) -> PolygonMetrics {
    let external_area = signed_area(&cell.external).abs();
    let holes_area: f64 = cell.holes.iter().map(|h| signed_area(h).abs()).sum();
    let area = external_area - holes_area;
    let external_perimeter = perimeter(&cell.external);
    let perimeter_with_holes =
        external_perimeter + cell.holes.iter().map(|h| perimeter(h)).sum::<f64>();
    let equivalent_diameter = (4.0 * area / PI).sqrt();

    let hull = convex_hull(&cell.external);
    let (feret_max, feret_a, feret_b) = hull_diameter(&hull);
    let feret_min = hull_min_width(&hull);
    let (major_axis_length, minor_axis_length) = axis_lengths(cell);
    let bbox = BoundingBox::of(&cell.external);

    PolygonMetrics {
        area,
        perimeter: external_perimeter,
        perimeter_with_holes,
        equivalent_diameter,
        // Discretised outlines can exceed the isoperimetric bound by rounding; the definition caps
        // it at 1.
        circularity: (4.0 * PI * area / perimeter_with_holes.powi(2)).min(1.0),
        feret_diameter_max: feret_max,
        feret_diameter_min: feret_min,
        feret_diameter_orthogonal: hull_width_across(&hull, feret_a, feret_b),
        feret_aspect_ratio: feret_max / feret_min,
        major_axis_length,
        minor_axis_length,
        bounding_box_width: bbox.width(),
        bounding_box_height: bbox.height(),
        extent: area / (bbox.width() * bbox.height()),
        compactness: perimeter_with_holes.powi(2) / (4.0 * PI * area),
        convexity: perimeter(&hull) / external_perimeter,
        solidity: area / signed_area(&hull).abs(),
        sphericity: PI * equivalent_diameter / perimeter_with_holes,
    }
}

/// Raw area moments ∫1, ∫x, ∫y, ∫x², ∫xy, ∫y² of a region.
#[derive(Debug, Clone, Copy, Default)]
struct Moments {
    m00: f64,
    m10: f64,
    m01: f64,
    m20: f64,
    m11: f64,
    m02: f64,
}

impl Moments {
    /// The moments of the area a ring encloses, by Green's theorem (exact for polygons),
    /// with coordinates relative to `origin` and the sign flipped so the area is positive.
    fn of_ring(ring: &[Point], origin: Point) -> Moments {
        let mut m = Moments::default();
        let n = ring.len();
        for i in 0..n {
            let (a, b) = (ring[i], ring[(i + 1) % n]);
            let (x0, y0, x1, y1) = (
                a.x - origin.x,
                a.y - origin.y,
                b.x - origin.x,
                b.y - origin.y,
            );
            let c = x0 * y1 - x1 * y0;
            m.m00 += c / 2.0;
            m.m10 += (x0 + x1) * c / 6.0;
            m.m01 += (y0 + y1) * c / 6.0;
            m.m20 += (x0 * x0 + x0 * x1 + x1 * x1) * c / 12.0;
            m.m02 += (y0 * y0 + y0 * y1 + y1 * y1) * c / 12.0;
            m.m11 += (x0 * y1 + 2.0 * x0 * y0 + 2.0 * x1 * y1 + x1 * y0) * c / 24.0;
        }
        if m.m00 < 0.0 { m.scale(-1.0) } else { m }
    }

    fn scale(self, k: f64) -> Moments {
        Moments {
            m00: self.m00 * k,
            m10: self.m10 * k,
            m01: self.m01 * k,
            m20: self.m20 * k,
            m11: self.m11 * k,
            m02: self.m02 * k,
        }
    }

    fn minus(self, other: Moments) -> Moments {
        Moments {
            m00: self.m00 - other.m00,
            m10: self.m10 - other.m10,
            m01: self.m01 - other.m01,
            m20: self.m20 - other.m20,
            m11: self.m11 - other.m11,
            m02: self.m02 - other.m02,
        }
    }
}

/// Major and minor axis lengths: 4·√λ of the eigenvalues of the region's normalised second
/// central moments (the inertia tensor scikit-image's `regionprops` uses).
fn axis_lengths(cell: &CellPolygon) -> (f64, f64) {
    // Moments about a vertex of the cell rather than the image origin: far from the origin the
    // central moments would be small differences of huge numbers.
    let Some(&origin) = cell.external.first() else {
        return (f64::NAN, f64::NAN);
    };
    let region = cell
        .holes
        .iter()
        .fold(Moments::of_ring(&cell.external, origin), |m, hole| {
            m.minus(Moments::of_ring(hole, origin))
        });
    if region.m00 <= 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let cx = region.m10 / region.m00;
    let cy = region.m01 / region.m00;
    let mu20 = region.m20 / region.m00 - cx * cx;
    let mu02 = region.m02 / region.m00 - cy * cy;
    let mu11 = region.m11 / region.m00 - cx * cy;
    let mean = (mu20 + mu02) / 2.0;
    let spread = (((mu20 - mu02) / 2.0).powi(2) + mu11 * mu11).sqrt();
    // Rounding can push the smaller eigenvalue of a thin region a hair below zero.
    let major = 4.0 * (mean + spread).max(0.0).sqrt();
    let minor = 4.0 * (mean - spread).max(0.0).sqrt();
    (major, minor)
}

/// The metrics rows of one image, in Polygon ID order.
pub fn measure_image(
    image_name: &str,
    image_id: &ImageId,
    prepared: &PreparedImage,
) -> Vec<MetricsRow> {
    prepared
        .cells
        .iter()
        .map(|cell| MetricsRow {
            image_name: image_name.to_owned(),
            image_id: image_id.clone(),
            polygon_id: cell.polygon_id,
            metrics: measure(cell),
        })
        .collect()
}

/// How a metric changes with the scale, and which unit its header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    Length,
    Area,
    Ratio,
}

impl Dimension {
    /// The unit in parentheses in headers, or `None` for ratios.
    pub fn unit(self, scale: Option<f64>) -> Option<&'static str> {
        match (self, scale.is_some()) {
            (Dimension::Length, false) => Some("px"),
            (Dimension::Length, true) => Some("µm"),
            (Dimension::Area, false) => Some("px²"),
            (Dimension::Area, true) => Some("µm²"),
            (Dimension::Ratio, _) => None,
        }
    }

    fn factor(self, scale: Option<f64>) -> f64 {
        let s = scale.unwrap_or(1.0);
        match self {
            Dimension::Length => s,
            Dimension::Area => s * s,
            Dimension::Ratio => 1.0,
        }
    }

    fn header(self, name: &str, scale: Option<f64>) -> String {
        match self.unit(scale) {
            Some(unit) => format!("{name} ({unit})"),
            None => name.to_owned(),
        }
    }
}

/// One metric column: its column name, dimension and value.
#[derive(Clone, Copy)]
pub struct MetricColumn {
    pub name: &'static str,
    pub dimension: Dimension,
    pub value: fn(&PolygonMetrics) -> f64,
}

/// The metric columns of docs/reference.md ("Metrics") in order, after Image Name, Image ID and
/// Polygon ID.
pub const METRIC_COLUMNS: [MetricColumn; 18] = {
    use Dimension::{Area, Length, Ratio};
    const fn col(
        name: &'static str,
        dimension: Dimension,
        value: fn(&PolygonMetrics) -> f64,
    ) -> MetricColumn {
        MetricColumn {
            name,
            dimension,
            value,
        }
    }
    [
        col("Area", Area, |m| m.area),
        col("Perimeter", Length, |m| m.perimeter),
        col("Perimeter with Holes", Length, |m| m.perimeter_with_holes),
        col("Equivalent Diameter", Length, |m| m.equivalent_diameter),
        col("Circularity", Ratio, |m| m.circularity),
        col("Feret Diameter Max", Length, |m| m.feret_diameter_max),
        col("Feret Diameter Min", Length, |m| m.feret_diameter_min),
        col("Feret Diameter Orthogonal", Length, |m| {
            m.feret_diameter_orthogonal
        }),
        col("Feret Aspect Ratio", Ratio, |m| m.feret_aspect_ratio),
        col("Major Axis Length", Length, |m| m.major_axis_length),
        col("Minor Axis Length", Length, |m| m.minor_axis_length),
        col("Bounding Box Width", Length, |m| m.bounding_box_width),
        col("Bounding Box Height", Length, |m| m.bounding_box_height),
        col("Extent", Ratio, |m| m.extent),
        col("Compactness", Ratio, |m| m.compactness),
        col("Convexity", Ratio, |m| m.convexity),
        col("Solidity", Ratio, |m| m.solidity),
        col("Sphericity", Ratio, |m| m.sphericity),
    ]
};

/// All column headers of the CSV and the "Polygon Metrics" sheet, units included.
pub fn metrics_headers(scale: Option<f64>) -> Vec<String> {
    let mut headers = vec![
        "Image Name".to_owned(),
        "Image ID".to_owned(),
        "Polygon ID".to_owned(),
    ];
    headers.extend(
        METRIC_COLUMNS
            .iter()
            .map(|c| c.dimension.header(c.name, scale)),
    );
    headers
}

impl PolygonMetrics {
    /// The metrics in micrometres for `Some(micrometres per pixel)`, unchanged for `None`.
    pub fn scaled(&self, scale: Option<f64>) -> PolygonMetrics {
        let length = Dimension::Length.factor(scale);
        let area = Dimension::Area.factor(scale);
        PolygonMetrics {
            area: self.area * area,
            perimeter: self.perimeter * length,
            perimeter_with_holes: self.perimeter_with_holes * length,
            equivalent_diameter: self.equivalent_diameter * length,
            feret_diameter_max: self.feret_diameter_max * length,
            feret_diameter_min: self.feret_diameter_min * length,
            feret_diameter_orthogonal: self.feret_diameter_orthogonal * length,
            major_axis_length: self.major_axis_length * length,
            minor_axis_length: self.minor_axis_length * length,
            bounding_box_width: self.bounding_box_width * length,
            bounding_box_height: self.bounding_box_height * length,
            ..*self
        }
    }
}

/// A running mean that skips non-finite values. Updated incrementally rather than as
/// sum / n, so millions of rows do not lose precision to one huge sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RunningMean {
    n: u64,
    mean: f64,
}

impl RunningMean {
    fn add(&mut self, value: f64) {
        if value.is_finite() {
            self.n += 1;
            self.mean += (value - self.mean) / self.n as f64;
        }
    }

    fn get(&self) -> Option<f64> {
        (self.n > 0).then_some(self.mean)
    }
}

/// The "Summary" statistics, accumulated one polygon at a time. Feed it metrics in the unit
/// the summary should be in (the writers feed it scaled metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSummary {
    count: u64,
    area: RunningMean,
    min_area: Option<f64>,
    max_area: Option<f64>,
    perimeter: RunningMean,
    circularity: RunningMean,
    compactness: RunningMean,
    extent: RunningMean,
    solidity: RunningMean,
    sphericity: RunningMean,
}

/// The summary's values; `None` where no polygon had a finite value. Serialized as the
/// `summary` object of `metrics.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryValues {
    pub count: u64,
    pub mean_area: Option<f64>,
    pub min_area: Option<f64>,
    pub max_area: Option<f64>,
    pub mean_perimeter: Option<f64>,
    pub mean_circularity: Option<f64>,
    pub mean_compactness: Option<f64>,
    pub mean_extent: Option<f64>,
    pub mean_solidity: Option<f64>,
    pub mean_sphericity: Option<f64>,
}

impl MetricsSummary {
    pub fn add(&mut self, m: &PolygonMetrics) {
        self.count += 1;
        self.area.add(m.area);
        if m.area.is_finite() {
            self.min_area = Some(self.min_area.map_or(m.area, |v| v.min(m.area)));
            self.max_area = Some(self.max_area.map_or(m.area, |v| v.max(m.area)));
        }
        self.perimeter.add(m.perimeter);
        self.circularity.add(m.circularity);
        self.compactness.add(m.compactness);
        self.extent.add(m.extent);
        self.solidity.add(m.solidity);
        self.sphericity.add(m.sphericity);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn values(&self) -> SummaryValues {
        SummaryValues {
            count: self.count,
            mean_area: self.area.get(),
            min_area: self.min_area,
            max_area: self.max_area,
            mean_perimeter: self.perimeter.get(),
            mean_circularity: self.circularity.get(),
            mean_compactness: self.compactness.get(),
            mean_extent: self.extent.get(),
            mean_solidity: self.solidity.get(),
            mean_sphericity: self.sphericity.get(),
        }
    }
}

/// One line of the "Summary" sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryStatistic {
    /// The Statistic column, unit included, e.g. `Mean Area (µm²)`.
    pub label: String,
    pub value: Option<f64>,
    /// `None` for the polygon count.
    pub dimension: Option<Dimension>,
}

impl SummaryValues {
    /// The (Statistic, Value) rows of the "Summary" sheet.
    pub fn statistics(&self, scale: Option<f64>) -> Vec<SummaryStatistic> {
        use Dimension::{Area, Length, Ratio};
        let stat = |label: &str, value: Option<f64>, dimension: Dimension| SummaryStatistic {
            label: dimension.header(label, scale),
            value,
            dimension: Some(dimension),
        };
        vec![
            SummaryStatistic {
                label: "Polygon Count".to_owned(),
                value: Some(self.count as f64),
                dimension: None,
            },
            stat("Mean Area", self.mean_area, Area),
            stat("Min Area", self.min_area, Area),
            stat("Max Area", self.max_area, Area),
            stat("Mean Perimeter", self.mean_perimeter, Length),
            stat("Mean Circularity", self.mean_circularity, Ratio),
            stat("Mean Compactness", self.mean_compactness, Ratio),
            stat("Mean Extent", self.mean_extent, Ratio),
            stat("Mean Solidity", self.mean_solidity, Ratio),
            stat("Mean Sphericity", self.mean_sphericity, Ratio),
        ]
    }
}

/// Streams `metrics.csv`: a header line, then one line per row. Numbers are Rust's shortest
/// round-trip form; text fields are quoted when they need it (RFC 4180). Lines end in `\n`.
pub struct MetricsCsvWriter<W: Write> {
    out: W,
    scale: Option<f64>,
    line: String,
}

impl<W: Write> MetricsCsvWriter<W> {
    /// Writes the header. Wrap `out` in a `BufWriter` if it is unbuffered: each row is one write.
    pub fn start(mut out: W, scale: Option<f64>) -> io::Result<MetricsCsvWriter<W>> {
        let header: Vec<String> = metrics_headers(scale)
            .iter()
            .map(|h| csv_field(h))
            .collect();
        writeln!(out, "{}", header.join(","))?;
        Ok(MetricsCsvWriter {
            out,
            scale,
            line: String::new(),
        })
    }

    pub fn write_row(&mut self, row: &MetricsRow) -> io::Result<()> {
        use std::fmt::Write as _;
        let metrics = row.metrics.scaled(self.scale);
        self.line.clear();
        self.line.push_str(&csv_field(&row.image_name));
        self.line.push(',');
        self.line.push_str(&csv_field(row.image_id.as_str()));
        // Writing into a String cannot fail.
        let _ = write!(self.line, ",{}", row.polygon_id);
        for column in &METRIC_COLUMNS {
            let value = (column.value)(&metrics);
            self.line.push(',');
            if value.is_finite() {
                let _ = write!(self.line, "{value}");
            }
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    /// Flushes and hands the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Quotes a CSV field if it contains a separator, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Streams `metrics.json`: `{"units","scale","polygons":[…],"summary":{…}}`, one polygon per line.
/// The summary is accumulated from the rows as they pass.
pub struct MetricsJsonWriter<W: Write> {
    out: W,
    scale: Option<f64>,
    summary: MetricsSummary,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonRow<'a> {
    image_name: &'a str,
    image_id: &'a ImageId,
    polygon_id: u32,
    #[serde(flatten)]
    metrics: &'a PolygonMetrics,
}

impl<W: Write> MetricsJsonWriter<W> {
    /// Writes everything up to the opening of the `polygons` array.
    pub fn start(mut out: W, scale: Option<f64>) -> io::Result<MetricsJsonWriter<W>> {
        let units = serde_json::json!({
            "length": Dimension::Length.unit(scale),
            "area": Dimension::Area.unit(scale),
        });
        write!(
            out,
            "{{\"units\":{units},\"scale\":{},\"polygons\":[",
            serde_json::Value::from(scale)
        )?;
        Ok(MetricsJsonWriter {
            out,
            scale,
            summary: MetricsSummary::default(),
        })
    }

    pub fn write_row(&mut self, row: &MetricsRow) -> io::Result<()> {
        let metrics = row.metrics.scaled(self.scale);
        let separator = if self.summary.count() == 0 {
            "\n"
        } else {
            ",\n"
        };
        self.out.write_all(separator.as_bytes())?;
        serde_json::to_writer(
            &mut self.out,
            &JsonRow {
                image_name: &row.image_name,
                image_id: &row.image_id,
                polygon_id: row.polygon_id,
                metrics: &metrics,
            },
        )?;
        self.summary.add(&metrics);
        Ok(())
    }

    /// The summary of the rows written so far, in the file's units.
    pub fn summary(&self) -> &MetricsSummary {
        &self.summary
    }

    /// Closes the array, writes the summary, flushes and hands the writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(b"\n],\"summary\":")?;
        serde_json::to_writer(&mut self.out, &self.summary.values())?;
        self.out.write_all(b"}\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Data rows per "Polygon Metrics" sheet: Excel's 1 048 576 rows minus the header.
const XLSX_ROWS_PER_SHEET: u32 = 1_048_575;

/// Writes `metrics.xlsx` to `path`: "Polygon Metrics" (continued on "Polygon Metrics 2", … past
/// Excel's row limit) and "Summary". Returns the summary, in the file's units.
///
/// Numbers are stored at full precision and displayed with 2 decimals (lengths, areas) or 4
/// (ratios). rust_xlsxwriter's constant-memory mode needs its `constant_memory` feature, which the
/// workspace does not enable, so the workbook is built in memory before it is saved.
pub fn write_metrics_xlsx(
    path: &Path,
    scale: Option<f64>,
    rows: impl IntoIterator<Item = MetricsRow>,
) -> Result<MetricsSummary, XlsxError> {
    write_metrics_xlsx_paged(path, scale, rows, XLSX_ROWS_PER_SHEET)
}

fn write_metrics_xlsx_paged(
    path: &Path,
    scale: Option<f64>,
    rows: impl IntoIterator<Item = MetricsRow>,
    rows_per_sheet: u32,
) -> Result<MetricsSummary, XlsxError> {
    let header_format = Format::new().set_bold();
    let headers = metrics_headers(scale);

    let mut workbook = Workbook::new();
    let mut summary = MetricsSummary::default();
    let mut sheet_idx = 0;
    let mut rows_on_sheet = rows_per_sheet; // Forces a first sheet even when there are no rows.
    let mut rows = rows.into_iter().peekable();
    while rows_on_sheet == rows_per_sheet {
        sheet_idx += 1;
        // Constant-memory sheets stream rows to a temp file: millions of rows never sit in RAM.
        let sheet = workbook.add_worksheet_with_constant_memory()?;
        sheet.set_name(polygon_sheet_name(sheet_idx))?;
        write_polygon_sheet_header(sheet, &headers, &header_format)?;
        rows_on_sheet = 0;
        while rows_on_sheet < rows_per_sheet {
            let Some(row) = rows.next() else { break };
            let metrics = row.metrics.scaled(scale);
            let r: RowNum = rows_on_sheet + 1;
            sheet.write_string(r, 0, &row.image_name)?;
            sheet.write_string(r, 1, row.image_id.as_str())?;
            sheet.write_number(r, 2, row.polygon_id)?;
            for (column, col) in METRIC_COLUMNS.iter().zip(3 as ColNum..) {
                let value = (column.value)(&metrics);
                // Excel has no NaN or infinity: the cell stays blank.
                if value.is_finite() {
                    sheet.write_number_with_format(
                        r,
                        col,
                        value,
                        number_format(column.dimension),
                    )?;
                }
            }
            summary.add(&metrics);
            rows_on_sheet += 1;
        }
        if rows.peek().is_none() {
            break;
        }
    }

    let sheet = workbook.add_worksheet();
    sheet.set_name("Summary")?;
    sheet.set_column_width(0, 24)?;
    sheet.set_column_width(1, 16)?;
    sheet.write_string_with_format(0, 0, "Statistic", &header_format)?;
    sheet.write_string_with_format(0, 1, "Value", &header_format)?;
    for (statistic, r) in summary
        .values()
        .statistics(scale)
        .into_iter()
        .zip(1 as RowNum..)
    {
        sheet.write_string(r, 0, statistic.label)?;
        let Some(value) = statistic.value else {
            continue;
        };
        match statistic.dimension.map(number_format) {
            Some(format) => sheet.write_number_with_format(r, 1, value, format)?,
            None => sheet.write_number(r, 1, value)?,
        };
    }
    workbook.save(path)?;
    Ok(summary)
}

/// Display formats: the cells keep full precision, only what Excel shows is rounded.
fn number_format(dimension: Dimension) -> &'static Format {
    static TWO_DECIMALS: LazyLock<Format> = LazyLock::new(|| Format::new().set_num_format("0.00"));
    static FOUR_DECIMALS: LazyLock<Format> =
        LazyLock::new(|| Format::new().set_num_format("0.0000"));
    match dimension {
        Dimension::Length | Dimension::Area => &TWO_DECIMALS,
        Dimension::Ratio => &FOUR_DECIMALS,
    }
}

fn polygon_sheet_name(sheet_idx: u32) -> String {
    if sheet_idx == 1 {
        "Polygon Metrics".to_owned()
    } else {
        format!("Polygon Metrics {sheet_idx}")
    }
}

fn write_polygon_sheet_header(
    sheet: &mut Worksheet,
    headers: &[String],
    header_format: &Format,
) -> Result<(), XlsxError> {
    for (header, col) in headers.iter().zip(0 as ColNum..) {
        sheet.write_string_with_format(0, col, header, header_format)?;
        sheet.set_column_width(col, if col == 0 { 28 } else { 16 })?;
    }
    sheet.set_freeze_panes(1, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::f64::consts::{PI, SQRT_2};

    use super::*;
    use crate::geometry::tests::{XorShift, pts, random_polygon, rect};

    fn cell(external: Vec<Point>, holes: Vec<Vec<Point>>) -> CellPolygon {
        CellPolygon {
            polygon_id: 1,
            external,
            holes,
        }
    }

    fn values(m: &PolygonMetrics) -> Vec<f64> {
        METRIC_COLUMNS.iter().map(|c| (c.value)(m)).collect()
    }

    /// Compares every column with a relative tolerance, naming the column that differs.
    fn assert_close(actual: &PolygonMetrics, expected: &PolygonMetrics, tolerance: f64) {
        for ((column, a), e) in METRIC_COLUMNS
            .iter()
            .zip(values(actual))
            .zip(values(expected))
        {
            assert!(
                (a - e).abs() <= tolerance * e.abs().max(1.0),
                "{}: {a} != {e}",
                column.name
            );
        }
    }

    /// Expected values in column order, from Area to Sphericity.
    fn metrics_from(v: [f64; 18]) -> PolygonMetrics {
        PolygonMetrics {
            area: v[0],
            perimeter: v[1],
            perimeter_with_holes: v[2],
            equivalent_diameter: v[3],
            circularity: v[4],
            feret_diameter_max: v[5],
            feret_diameter_min: v[6],
            feret_diameter_orthogonal: v[7],
            feret_aspect_ratio: v[8],
            major_axis_length: v[9],
            minor_axis_length: v[10],
            bounding_box_width: v[11],
            bounding_box_height: v[12],
            extent: v[13],
            compactness: v[14],
            convexity: v[15],
            solidity: v[16],
            sphericity: v[17],
        }
    }

    fn l_shape() -> Vec<Point> {
        pts(&[
            (0.0, 0.0),
            (2.0, 0.0),
            (2.0, 1.0),
            (1.0, 1.0),
            (1.0, 2.0),
            (0.0, 2.0),
        ])
    }

    #[test]
    fn hand_computed_shapes() {
        let check = |cell: CellPolygon, expected: [f64; 18]| {
            assert_close(&measure(&cell), &metrics_from(expected), 1e-12);
        };
        let ed = |area: f64| (4.0 * area / PI).sqrt();
        // Unit square: second moments 1/12 on both axes.
        check(
            cell(rect(0.0, 0.0, 1.0, 1.0), vec![]),
            [
                1.0,
                4.0,
                4.0,
                ed(1.0),
                PI / 4.0,
                SQRT_2,
                1.0,
                SQRT_2,
                SQRT_2,
                4.0 * (1.0f64 / 12.0).sqrt(),
                4.0 * (1.0f64 / 12.0).sqrt(),
                1.0,
                1.0,
                1.0,
                4.0 / PI,
                1.0,
                1.0,
                PI * ed(1.0) / 4.0,
            ],
        );
        // 3×2 rectangle: Feret max is the diagonal √13, its orthogonal width 2·3·2/√13.
        let diagonal = 13f64.sqrt();
        check(
            cell(rect(10.0, 20.0, 13.0, 22.0), vec![]),
            [
                6.0,
                10.0,
                10.0,
                ed(6.0),
                24.0 * PI / 100.0,
                diagonal,
                2.0,
                12.0 / diagonal,
                diagonal / 2.0,
                4.0 * 0.75f64.sqrt(),
                4.0 * (1.0f64 / 3.0).sqrt(),
                3.0,
                2.0,
                1.0,
                100.0 / (24.0 * PI),
                1.0,
                1.0,
                PI * ed(6.0) / 10.0,
            ],
        );
        // L-shape (two unit squares on a 2×1 bar): centroid (5/6, 5/6), μ20 = μ02 = 11/36,
        // μ11 = −4/36, so λ = 15/36 and 7/36. The hull cuts the notch: area 3.5, perimeter 6 + √2.
        check(
            cell(l_shape(), vec![]),
            [
                3.0,
                8.0,
                8.0,
                ed(3.0),
                12.0 * PI / 64.0,
                2.0 * SQRT_2,
                2.0,
                3.0 / SQRT_2,
                SQRT_2,
                4.0 * (15.0f64 / 36.0).sqrt(),
                4.0 * (7.0f64 / 36.0).sqrt(),
                2.0,
                2.0,
                0.75,
                64.0 / (12.0 * PI),
                (6.0 + SQRT_2) / 8.0,
                3.0 / 3.5,
                PI * ed(3.0) / 8.0,
            ],
        );
        // 4×4 square with a centred 2×2 hole: ∫(x−2)² = 64/3 − 4/3 = 20 over area 12.
        check(
            cell(rect(0.0, 0.0, 4.0, 4.0), vec![rect(1.0, 1.0, 3.0, 3.0)]),
            [
                12.0,
                16.0,
                24.0,
                ed(12.0),
                4.0 * PI * 12.0 / 576.0,
                4.0 * SQRT_2,
                4.0,
                4.0 * SQRT_2,
                SQRT_2,
                4.0 * (5.0f64 / 3.0).sqrt(),
                4.0 * (5.0f64 / 3.0).sqrt(),
                4.0,
                4.0,
                0.75,
                576.0 / (48.0 * PI),
                1.0,
                0.75,
                PI * ed(12.0) / 24.0,
            ],
        );
    }

    #[test]
    fn off_centre_hole_moves_the_centroid() {
        // A 4×2 bar with a 1×1 hole at one end: the remaining 7 px² is the union of a 3×2
        // block and a 1×1 square, whose moments are easy to add by hand.
        let m = measure(&cell(
            rect(0.0, 0.0, 4.0, 2.0),
            vec![rect(3.0, 1.0, 4.0, 2.0)],
        ));
        // Block [0,3]×[0,2] and square [3,4]×[0,1].
        let (sx, sy): (f64, f64) = (3.0 * 3.0 + 3.5, 3.0 * 2.0 + 0.5);
        let (cx, cy) = (sx / 7.0, sy / 7.0);
        let sxx = 2.0 * 9.0 + (64.0 - 27.0) / 3.0;
        let syy = 3.0 * 8.0 / 3.0 + 1.0 / 3.0;
        let sxy = 4.5 * 2.0 + 3.5 * 0.5;
        let (mu20, mu02, mu11) = (
            sxx / 7.0 - cx * cx,
            syy / 7.0 - cy * cy,
            sxy / 7.0 - cx * cy,
        );
        let spread = (((mu20 - mu02) / 2.0).powi(2) + mu11 * mu11).sqrt();
        let major = 4.0 * ((mu20 + mu02) / 2.0 + spread).sqrt();
        let minor = 4.0 * ((mu20 + mu02) / 2.0 - spread).sqrt();
        assert!((m.major_axis_length - major).abs() < 1e-12, "{m:?}");
        assert!((m.minor_axis_length - minor).abs() < 1e-12, "{m:?}");
        assert_eq!(m.area, 7.0);
        assert_eq!(m.perimeter_with_holes, 16.0);
    }

    #[test]
    fn polygon_of_256_sides_approximates_a_circle() {
        let r = 25.0;
        let n = 256;
        let circle: Vec<Point> = (0..n)
            .map(|k| {
                let a = std::f64::consts::TAU * k as f64 / n as f64;
                Point {
                    x: 100.0 + r * a.cos(),
                    y: 80.0 + r * a.sin(),
                }
            })
            .collect();
        let m = measure(&cell(circle, vec![]));
        let analytic = metrics_from([
            PI * r * r,
            2.0 * PI * r,
            2.0 * PI * r,
            2.0 * r,
            1.0,
            2.0 * r,
            2.0 * r,
            2.0 * r,
            1.0,
            2.0 * r,
            2.0 * r,
            2.0 * r,
            2.0 * r,
            PI / 4.0,
            1.0,
            1.0,
            1.0,
            1.0,
        ]);
        // The inscribed 256-gon differs from the circle by (π/256)²/6 ≈ 2.5e-5 in area.
        assert_close(&m, &analytic, 1e-3);
        // Opposite vertices are exactly a diameter apart; the narrowest width is between edges.
        assert!((m.feret_diameter_max - 2.0 * r).abs() < 1e-9);
        let apothem_width = 2.0 * r * (PI / n as f64).cos();
        assert!((m.feret_diameter_min - apothem_width).abs() < 1e-9);
        assert!(m.circularity <= 1.0);
    }

    #[test]
    fn ring_orientation_and_start_vertex_change_nothing() {
        let mut rng = XorShift(42);
        let shapes = vec![
            cell(l_shape(), vec![]),
            cell(rect(0.0, 0.0, 4.0, 4.0), vec![rect(1.0, 1.0, 3.0, 3.0)]),
            cell(
                rect(0.0, 0.0, 10.0, 6.0),
                vec![
                    rect(1.0, 1.0, 3.0, 2.0),
                    pts(&[(5.0, 1.0), (9.0, 1.0), (7.0, 5.0)]),
                ],
            ),
            cell(random_polygon(&mut rng, 1), vec![]),
        ];
        for original in shapes {
            let expected = measure(&original);
            let mut reversed = original.clone();
            reversed.external.reverse();
            assert_close(&measure(&reversed), &expected, 1e-12);
            let mut holes_reversed = original.clone();
            holes_reversed.holes.iter_mut().for_each(|h| h.reverse());
            assert_close(&measure(&holes_reversed), &expected, 1e-12);
            let mut rotated = original.clone();
            rotated.external.rotate_left(2);
            assert_close(&measure(&rotated), &expected, 1e-12);
        }
    }

    #[test]
    fn random_polygons_match_their_definitions() {
        let mut rng = XorShift(0xDEAD_BEEF_CAFE_F00D);
        for idx in 0..50 {
            let ring = random_polygon(&mut rng, idx);
            let m = measure(&cell(ring.clone(), vec![]));
            let shoelace: f64 = (0..ring.len())
                .map(|i| {
                    let (a, b) = (ring[i], ring[(i + 1) % ring.len()]);
                    a.x * b.y - b.x * a.y
                })
                .sum::<f64>()
                / 2.0;
            assert!((m.area - shoelace.abs()).abs() < 1e-9 * shoelace.abs());
            let brute_max = ring
                .iter()
                .flat_map(|a| ring.iter().map(move |b| (a.x - b.x).hypot(a.y - b.y)))
                .fold(0.0, f64::max);
            assert!((m.feret_diameter_max - brute_max).abs() < 1e-9);
            // Ratios stay in their ranges on any simple polygon.
            assert!(m.feret_diameter_min <= m.feret_diameter_orthogonal + 1e-9);
            assert!(m.feret_diameter_orthogonal <= m.feret_diameter_max + 1e-9);
            assert!(m.minor_axis_length <= m.major_axis_length);
            assert!(m.circularity > 0.0 && m.circularity <= 1.0);
            assert!(m.solidity > 0.0 && m.solidity <= 1.0 + 1e-12);
            assert!(m.convexity > 0.0 && m.convexity <= 1.0 + 1e-12);
            assert!(m.extent > 0.0 && m.extent <= 1.0 + 1e-12);
            assert!((m.compactness * m.circularity - 1.0).abs() < 1e-9);
            assert!((m.sphericity * m.sphericity - m.circularity).abs() < 1e-9);
        }
    }

    #[test]
    fn holes_cancelling_the_area_make_undefined_ratios_not_numbers() {
        // A hole identical to its cell leaves nothing: ratios over the area are not numbers.
        let m = measure(&cell(
            rect(0.0, 0.0, 2.0, 2.0),
            vec![rect(0.0, 0.0, 2.0, 2.0)],
        ));
        assert_eq!(m.area, 0.0);
        assert!(m.compactness.is_infinite());
        assert!(m.major_axis_length.is_nan());
        assert_eq!(m.solidity, 0.0);
    }

    #[test]
    fn scaling_multiplies_lengths_and_areas_only() {
        let m = measure(&cell(l_shape(), vec![]));
        let scaled = m.scaled(Some(0.5));
        for (column, (before, after)) in METRIC_COLUMNS
            .iter()
            .zip(values(&m).into_iter().zip(values(&scaled)))
        {
            let factor = match column.dimension {
                Dimension::Length => 0.5,
                Dimension::Area => 0.25,
                Dimension::Ratio => 1.0,
            };
            assert_eq!(after, before * factor, "{}", column.name);
        }
        assert_eq!(m.scaled(None), m);
    }

    #[test]
    fn headers_carry_units() {
        let check = |scale: Option<f64>, expected: &[&str]| {
            let headers = metrics_headers(scale);
            assert_eq!(headers.len(), 21);
            for wanted in expected {
                assert!(
                    headers.iter().any(|h| h == wanted),
                    "{wanted} in {headers:?}"
                );
            }
        };
        check(
            None,
            &[
                "Image Name",
                "Image ID",
                "Polygon ID",
                "Area (px²)",
                "Perimeter with Holes (px)",
                "Major Axis Length (px)",
                "Feret Aspect Ratio",
                "Sphericity",
            ],
        );
        check(
            Some(0.25),
            &[
                "Area (µm²)",
                "Feret Diameter Orthogonal (µm)",
                "Circularity",
            ],
        );
        assert_eq!(
            metrics_headers(None)[3..],
            [
                "Area (px²)",
                "Perimeter (px)",
                "Perimeter with Holes (px)",
                "Equivalent Diameter (px)",
                "Circularity",
                "Feret Diameter Max (px)",
                "Feret Diameter Min (px)",
                "Feret Diameter Orthogonal (px)",
                "Feret Aspect Ratio",
                "Major Axis Length (px)",
                "Minor Axis Length (px)",
                "Bounding Box Width (px)",
                "Bounding Box Height (px)",
                "Extent",
                "Compactness",
                "Convexity",
                "Solidity",
                "Sphericity",
            ]
        );
    }

    fn with(area: f64, perimeter: f64, circularity: f64) -> PolygonMetrics {
        PolygonMetrics {
            area,
            perimeter,
            circularity,
            ..measure(&cell(rect(0.0, 0.0, 1.0, 1.0), vec![]))
        }
    }

    #[test]
    fn summary_statistics() {
        let check = |rows: Vec<PolygonMetrics>, expected: SummaryValues| {
            let mut summary = MetricsSummary::default();
            rows.iter().for_each(|m| summary.add(m));
            assert_eq!(summary.values(), expected);
        };
        check(
            vec![],
            SummaryValues {
                count: 0,
                mean_area: None,
                min_area: None,
                max_area: None,
                mean_perimeter: None,
                mean_circularity: None,
                mean_compactness: None,
                mean_extent: None,
                mean_solidity: None,
                mean_sphericity: None,
            },
        );
        let unit = measure(&cell(rect(0.0, 0.0, 1.0, 1.0), vec![]));
        check(
            vec![
                with(1.0, 4.0, 0.5),
                with(3.0, 8.0, 0.7),
                with(8.0, 12.0, 0.6),
            ],
            SummaryValues {
                count: 3,
                mean_area: Some(4.0),
                min_area: Some(1.0),
                max_area: Some(8.0),
                mean_perimeter: Some(8.0),
                mean_circularity: Some(0.6),
                mean_compactness: Some(unit.compactness),
                mean_extent: Some(1.0),
                mean_solidity: Some(1.0),
                mean_sphericity: Some(unit.sphericity),
            },
        );
        // A polygon whose circularity is undefined still counts, but not in that mean.
        let undefined = with(2.0, 6.0, f64::NAN);
        let mut summary = MetricsSummary::default();
        summary.add(&with(1.0, 4.0, 0.5));
        summary.add(&undefined);
        let values = summary.values();
        assert_eq!(values.count, 2);
        assert_eq!(values.mean_circularity, Some(0.5));
        assert_eq!(values.mean_area, Some(1.5));
    }

    #[test]
    fn summary_statistics_are_labelled_with_units() {
        let mut summary = MetricsSummary::default();
        summary.add(&with(2.0, 4.0, 0.5));
        let labels: Vec<String> = summary
            .values()
            .statistics(Some(1.0))
            .into_iter()
            .map(|s| s.label)
            .collect();
        assert_eq!(
            labels,
            vec![
                "Polygon Count",
                "Mean Area (µm²)",
                "Min Area (µm²)",
                "Max Area (µm²)",
                "Mean Perimeter (µm)",
                "Mean Circularity",
                "Mean Compactness",
                "Mean Extent",
                "Mean Solidity",
                "Mean Sphericity",
            ]
        );
    }

    fn row(image_name: &str, polygon_id: u32, metrics: PolygonMetrics) -> MetricsRow {
        MetricsRow {
            image_name: image_name.to_owned(),
            image_id: "img-7".parse().unwrap(),
            polygon_id,
            metrics,
        }
    }

    #[test]
    fn csv_has_header_full_precision_and_quoted_names() {
        let l = measure(&cell(l_shape(), vec![]));
        let rows = [
            row("plain.png", 1, l),
            row("a, \"quoted\" name.png", 2, with(1.0 / 3.0, 4.0, f64::NAN)),
        ];
        let mut writer = MetricsCsvWriter::start(Vec::new(), Some(0.1)).unwrap();
        rows.iter().for_each(|r| writer.write_row(r).unwrap());
        let csv = String::from_utf8(writer.finish().unwrap()).unwrap();
        let lines: Vec<&str> = csv.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            format!("{}\n", metrics_headers(Some(0.1)).join(","))
        );
        let scaled = l.scaled(Some(0.1));
        let expected: Vec<String> = values(&scaled).iter().map(|v| v.to_string()).collect();
        assert_eq!(
            lines[1],
            format!("plain.png,img-7,1,{}\n", expected.join(","))
        );
        // Every number reads back to exactly the scaled value.
        let read_back: Vec<f64> = lines[1]
            .trim_end()
            .split(',')
            .skip(3)
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(read_back, values(&scaled));
        assert!(lines[2].starts_with("\"a, \"\"quoted\"\" name.png\",img-7,2,"));
        // The undefined circularity is an empty field, not "NaN".
        let mut fields: Vec<&str> = lines[2].trim_end().rsplitn(19, ',').collect();
        fields.reverse();
        // After the name, id and Polygon ID remainder come Area, Perimeter, …; Circularity is the fifth.
        assert_eq!(fields[1 + 4], "");
        assert_eq!(fields[1], (1.0f64 / 3.0 * (0.1 * 0.1)).to_string());
        assert!(!csv.contains("NaN"));
    }

    #[test]
    fn json_streams_polygons_and_summary() {
        let check = |scale: Option<f64>, rows: Vec<MetricsRow>, expected: serde_json::Value| {
            let mut writer = MetricsJsonWriter::start(Vec::new(), scale).unwrap();
            rows.iter().for_each(|r| writer.write_row(r).unwrap());
            let bytes = writer.finish().unwrap();
            let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(parsed, expected);
        };
        check(
            None,
            vec![],
            serde_json::json!({
                "units": {"length": "px", "area": "px²"},
                "scale": null,
                "polygons": [],
                "summary": {
                    "count": 0, "meanArea": null, "minArea": null, "maxArea": null,
                    "meanPerimeter": null, "meanCircularity": null, "meanCompactness": null,
                    "meanExtent": null, "meanSolidity": null, "meanSphericity": null,
                },
            }),
        );
        let square = measure(&cell(rect(0.0, 0.0, 1.0, 1.0), vec![]));
        let s = square.scaled(Some(2.0));
        check(
            Some(2.0),
            vec![row("a.png", 1, square), row("b.png", 3, square)],
            serde_json::json!({
                "units": {"length": "µm", "area": "µm²"},
                "scale": 2.0,
                "polygons": [
                    {
                        "imageName": "a.png", "imageId": "img-7", "polygonId": 1,
                        "area": 4.0, "perimeter": 8.0, "perimeterWithHoles": 8.0,
                        "equivalentDiameter": s.equivalent_diameter,
                        "circularity": s.circularity,
                        "feretDiameterMax": s.feret_diameter_max,
                        "feretDiameterMin": 2.0,
                        "feretDiameterOrthogonal": s.feret_diameter_orthogonal,
                        "feretAspectRatio": s.feret_aspect_ratio,
                        "majorAxisLength": s.major_axis_length,
                        "minorAxisLength": s.minor_axis_length,
                        "boundingBoxWidth": 2.0, "boundingBoxHeight": 2.0,
                        "extent": 1.0, "compactness": s.compactness, "convexity": 1.0,
                        "solidity": 1.0, "sphericity": s.sphericity,
                    },
                    serde_json::to_value(JsonRow {
                        image_name: "b.png",
                        image_id: &"img-7".parse().unwrap(),
                        polygon_id: 3,
                        metrics: &s,
                    }).unwrap(),
                ],
                "summary": {
                    "count": 2, "meanArea": 4.0, "minArea": 4.0, "maxArea": 4.0,
                    "meanPerimeter": 8.0, "meanCircularity": s.circularity,
                    "meanCompactness": s.compactness, "meanExtent": 1.0, "meanSolidity": 1.0,
                    "meanSphericity": s.sphericity,
                },
            }),
        );
    }

    #[test]
    fn json_writes_undefined_metrics_as_null() {
        let mut writer = MetricsJsonWriter::start(Vec::new(), None).unwrap();
        writer
            .write_row(&row("a.png", 1, with(1.0, 4.0, f64::NAN)))
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&writer.finish().unwrap()).unwrap();
        assert_eq!(
            parsed["polygons"][0]["circularity"],
            serde_json::Value::Null
        );
        assert_eq!(
            parsed["summary"]["meanCircularity"],
            serde_json::Value::Null
        );
    }

    /// A path in the system temp dir that the test removes again.
    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("cellport-metrics-{}-{name}", std::process::id()))
    }

    #[test]
    fn xlsx_is_written_and_summarised() {
        let check = |rows_per_sheet: u32, n_rows: u32| {
            let path = temp_path(&format!("{rows_per_sheet}-{n_rows}.xlsx"));
            let square = measure(&cell(rect(0.0, 0.0, 1.0, 1.0), vec![]));
            let rows = (1..=n_rows).map(|polygon_id| row("a.png", polygon_id, square));
            let summary = write_metrics_xlsx_paged(&path, Some(0.5), rows, rows_per_sheet).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(summary.count(), u64::from(n_rows));
            assert_eq!(summary.values().mean_area, (n_rows > 0).then_some(0.25));
            // An XLSX file is a ZIP archive.
            assert_eq!(&bytes[..2], b"PK");
        };
        check(XLSX_ROWS_PER_SHEET, 0);
        check(XLSX_ROWS_PER_SHEET, 3);
        // Rows past a sheet's limit continue on the next sheet instead of failing.
        check(2, 5);
        check(2, 4);
    }

    #[test]
    fn xlsx_reports_an_unwritable_path() {
        let path = temp_path("missing-dir").join("metrics.xlsx");
        let result = write_metrics_xlsx(&path, None, std::iter::empty());
        assert!(matches!(result, Err(XlsxError::IoError(_))), "{result:?}");
    }

    #[test]
    fn polygon_sheets_are_numbered_after_the_first() {
        assert_eq!(polygon_sheet_name(1), "Polygon Metrics");
        assert_eq!(polygon_sheet_name(2), "Polygon Metrics 2");
    }

    #[test]
    fn measure_image_numbers_rows_by_polygon_id() {
        let prepared = PreparedImage {
            cells: vec![
                CellPolygon {
                    polygon_id: 1,
                    external: rect(0.0, 0.0, 1.0, 1.0),
                    holes: vec![],
                },
                CellPolygon {
                    polygon_id: 2,
                    external: l_shape(),
                    holes: vec![],
                },
            ],
            ..PreparedImage::default()
        };
        let rows = measure_image("x.png", &"img-7".parse().unwrap(), &prepared);
        let ids: Vec<(&str, u32, f64)> = rows
            .iter()
            .map(|r| (r.image_name.as_str(), r.polygon_id, r.metrics.area))
            .collect();
        assert_eq!(ids, vec![("x.png", 1, 1.0), ("x.png", 2, 3.0)]);
    }
}
