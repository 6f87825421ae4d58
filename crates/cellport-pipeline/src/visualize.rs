//! Visualizations: the image with its polygons drawn over it (docs/reference.md, "Export options"
//! and "Archive layout").
//!
//! Three pure functions make a `visualizations/<stem>_viz.png` entry:
//! [`decode_for_display`] turns any stored image into 8-bit RGB, [`render_visualization`] draws
//! the polygons over it, and [`encode_png`] writes the result.
//!
//! Coordinates are continuous pixel coordinates: pixel `(i, j)` covers the square
//! `[i, i+1) × [j, j+1)` and its centre is `(i + 0.5, j + 0.5)`, as in COCO and a browser canvas.
//!
//! Rendering works on coverage masks over the clipped bounding box of each shape, never over the
//! whole image, so its cost follows the polygons' size rather than the image's:
//! * fills are scanline-rasterised with [`FILL_SUBSAMPLES`] sub-scanlines per pixel row and exact
//!   horizontal span coverage, so their edges are anti-aliased too;
//! * strokes use the distance from each pixel centre to each segment:
//!   `coverage = clamp(width/2 + 0.5 − distance, 0, 1)`, which gives anti-aliased edges at any
//!   width, round joins and caps; an outline's coverage is the maximum over its segments so
//!   joints are not blended twice;
//! * numbers are laid out with the bundled DejaVu Sans Bold through `ab_glyph`, whose rasterizer
//!   gives per-pixel glyph coverage.

use std::io::Cursor;
use std::sync::LazyLock;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use cellport_core::Point;
use cellport_core::options::{Rgb, VisualizationOptions};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageError, ImageReader, RgbImage};

use crate::geometry::{CellPolygon, PreparedImage};

/// Sub-scanlines per pixel row when filling: four vertical samples with exact horizontal
/// coverage keep fill edges smooth at a quarter of the cost of 4×4 supersampling.
const FILL_SUBSAMPLES: u32 = 4;

/// The luminance percentiles that 16-bit images are stretched between (0.5th and 99.5th), so a
/// few hot or dead pixels do not flatten the contrast of the rest.
const STRETCH_LOW_PERCENTILE: f64 = 0.005;
const STRETCH_HIGH_PERCENTILE: f64 = 0.995;

/// Label disc and text colours: a white disc with near-black digits reads on any image and any
/// polygon colour.
const LABEL_DISC: [u8; 3] = [255, 255, 255];
const LABEL_TEXT: [u8; 3] = [20, 20, 20];

/// The bundled bold font, parsed once per process.
static LABEL_FONT: LazyLock<FontRef<'static>> = LazyLock::new(|| {
    FontRef::try_from_slice(include_bytes!("../assets/DejaVuSans-Bold.ttf"))
        .expect("the bundled DejaVuSans-Bold.ttf parses")
});

/// Decodes a PNG, JPEG, TIFF or BMP (the format is guessed from the content) into 8-bit RGB for
/// display.
///
/// 8-bit images keep their values; alpha is dropped, not composited. 16-bit images (the usual
/// microscopy TIFF or PNG) are contrast-stretched: with `n` pixels and their luminance
/// (Rec. 709 weights for colour, the value itself for grayscale) sorted ascending, `low` is the
/// luminance at rank `⌊0.005·(n−1)⌋` and `high` the one at rank `⌈0.995·(n−1)⌉`, and every
/// channel maps linearly from `low..=high` to `0..=255`, clamped. If those percentiles coincide
/// the full range `min..=max` is used instead, and a constant image is scaled by `1/257`.
/// Floating-point images are first spread over `0..=65535` from their finite minimum to maximum
/// and then stretched the same way.
pub fn decode_for_display(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    decode_for_display_from(Cursor::new(bytes))
}

/// [`decode_for_display`] reading from a file or any seekable reader, so the encoded image
/// never sits in memory beside the decoded one.
pub fn decode_for_display_from<R: std::io::BufRead + std::io::Seek>(
    reader: R,
) -> Result<RgbImage, ImageError> {
    let decoded = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(ImageError::IoError)?
        .decode()?;
    let (width, height) = (decoded.width(), decoded.height());
    let stretched = match &decoded {
        DynamicImage::ImageLuma16(image) => stretch_16bit(image.as_raw(), 1, false, width, height),
        DynamicImage::ImageLumaA16(image) => stretch_16bit(image.as_raw(), 2, false, width, height),
        DynamicImage::ImageRgb16(image) => stretch_16bit(image.as_raw(), 3, true, width, height),
        DynamicImage::ImageRgba16(image) => stretch_16bit(image.as_raw(), 4, true, width, height),
        DynamicImage::ImageRgb32F(image) => {
            let (samples, channels) = float_to_16bit(image.as_raw(), 3);
            stretch_16bit(&samples, channels, true, width, height)
        }
        DynamicImage::ImageRgba32F(image) => {
            let (samples, channels) = float_to_16bit(image.as_raw(), 4);
            stretch_16bit(&samples, channels, true, width, height)
        }
        // Already what we draw on: moved, not copied (images are tens of MB).
        DynamicImage::ImageRgb8(_) => return Ok(decoded.into_rgb8()),
        // Every other 8-bit layout (and anything added to the enum later) converts without rescaling.
        _ => decoded.to_rgb8(),
    };
    Ok(stretched)
}

/// Draws `prepared`'s polygons over a copy of `base`.
///
/// Order: cell fills (external colour, holes left out), hole fills (internal colour, orphan
/// holes included), outlines (each in its polygon's colour), then, with `show_numbers`, each
/// cell's Polygon ID in a white disc at its area centroid (holes subtracted). Everything is
/// clipped to the image; polygons outside it or degenerate ones draw nothing and never panic.
pub fn render_visualization(
    base: &RgbImage,
    prepared: &PreparedImage,
    options: &VisualizationOptions,
) -> RgbImage {
    render_visualization_in_place(base.clone(), prepared, options)
}

/// [`render_visualization`] drawing straight onto `canvas`, for callers that no longer need the
/// undecorated image: one image-sized buffer fewer per render.
pub fn render_visualization_in_place(
    mut canvas: RgbImage,
    prepared: &PreparedImage,
    options: &VisualizationOptions,
) -> RgbImage {
    let external = options.polygon_colors.external;
    let internal = options.polygon_colors.internal;
    let alpha = options.transparency.clamp(0.0, 1.0) as f32;

    if alpha > 0.0 {
        for cell in &prepared.cells {
            let holes: Vec<&[Point]> = cell.holes.iter().map(Vec::as_slice).collect();
            fill_region(
                &mut canvas,
                &[cell.external.as_slice()],
                &holes,
                external,
                alpha,
            );
        }
        let all_holes = prepared
            .cells
            .iter()
            .flat_map(|cell| &cell.holes)
            .chain(&prepared.orphan_holes);
        for hole in all_holes {
            fill_region(&mut canvas, &[hole.as_slice()], &[], internal, alpha);
        }
    }

    // A stroke width of 0 cannot come from parsed options; drawing 1 px keeps outlines visible.
    let stroke_width = f64::from(options.stroke_width.max(1));
    for cell in &prepared.cells {
        stroke_ring(&mut canvas, &cell.external, stroke_width, external);
        for hole in &cell.holes {
            stroke_ring(&mut canvas, hole, stroke_width, internal);
        }
    }
    for hole in &prepared.orphan_holes {
        stroke_ring(&mut canvas, hole, stroke_width, internal);
    }

    if options.show_numbers {
        let font_size = options.font_size.max(1) as f32;
        for cell in &prepared.cells {
            if let Some(centre) = area_centroid(cell) {
                draw_label(&mut canvas, &cell.polygon_id.to_string(), centre, font_size);
            }
        }
    }
    canvas
}

/// Encodes `image` as PNG with fast compression: visualizations are written once per export
/// and archived as they are, so encoding speed matters more than a few percent of size.
///
/// # Panics
///
/// If `image` has a zero width or height, which PNG cannot represent and which no decoded
/// image has.
pub fn encode_png(image: &RgbImage) -> Vec<u8> {
    // Sized for the worst case (noise barely compresses), so the buffer never doubles mid-encode.
    let mut bytes = Vec::with_capacity(image.as_raw().len() + image.as_raw().len() / 64 + 1024);
    let encoder =
        PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, FilterType::Adaptive);
    image
        .write_with_encoder(encoder)
        .expect("encoding a non-empty RGB image into memory cannot fail");
    bytes
}

/// Stretches interleaved 16-bit samples (`channels` per pixel, the last being alpha for 2 and 4)
/// to 8-bit RGB as documented on [`decode_for_display`].
fn stretch_16bit(
    samples: &[u16],
    channels: usize,
    colour: bool,
    width: u32,
    height: u32,
) -> RgbImage {
    let luminance = |pixel: &[u16]| -> u16 {
        if colour {
            let weighted =
                2126 * u32::from(pixel[0]) + 7152 * u32::from(pixel[1]) + 722 * u32::from(pixel[2]);
            ((weighted + 5000) / 10_000) as u16
        } else {
            pixel[0]
        }
    };

    // A histogram gives exact percentiles in linear time and constant memory, whatever the
    // image size.
    let mut histogram = vec![0u64; 1 << 16];
    for pixel in samples.chunks_exact(channels) {
        histogram[usize::from(luminance(pixel))] += 1;
    }
    let n_pixels: u64 = histogram.iter().sum();
    let value_at_rank = |rank: u64| -> u16 {
        let mut seen = 0;
        for (value, &count) in histogram.iter().enumerate() {
            seen += count;
            if seen > rank {
                return value as u16;
            }
        }
        u16::MAX
    };
    let last_rank = n_pixels.saturating_sub(1) as f64;
    let mut low = value_at_rank((STRETCH_LOW_PERCENTILE * last_rank).floor() as u64);
    let mut high = value_at_rank((STRETCH_HIGH_PERCENTILE * last_rank).ceil() as u64);
    if high <= low {
        low = value_at_rank(0);
        high = value_at_rank(n_pixels.saturating_sub(1));
    }

    // One lookup table maps every 16-bit sample, so the per-pixel work is three loads.
    let table: Vec<u8> = (0..=u16::MAX)
        .map(|value| {
            if high <= low {
                (value / 257) as u8
            } else {
                let t = (f64::from(value) - f64::from(low)) / (f64::from(high) - f64::from(low));
                (t.clamp(0.0, 1.0) * 255.0).round() as u8
            }
        })
        .collect();

    let mut rgb = Vec::with_capacity(samples.len() / channels * 3);
    for pixel in samples.chunks_exact(channels) {
        if colour {
            rgb.extend(pixel[..3].iter().map(|&v| table[usize::from(v)]));
        } else {
            let v = table[usize::from(pixel[0])];
            rgb.extend([v, v, v]);
        }
    }
    RgbImage::from_raw(width, height, rgb).expect("three samples per pixel of the decoded size")
}

/// Spreads floating-point RGB(A) samples over `0..=65535` (finite minimum to maximum; NaN becomes
/// the minimum) and drops alpha, so the 16-bit stretch applies. Returns the samples and their
/// channel count.
fn float_to_16bit(samples: &[f32], channels: usize) -> (Vec<u16>, usize) {
    let colour_samples = || {
        samples
            .chunks_exact(channels)
            .flat_map(|pixel| &pixel[..3])
            .copied()
    };
    let (min, max) = colour_samples()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let span = f64::from(max) - f64::from(min);
    let quantised = colour_samples()
        .map(|v| {
            if span > 0.0 && span.is_finite() {
                let t = (f64::from(v) - f64::from(min)) / span;
                // NaN clamps to NaN and casts to 0; infinities clamp to the ends.
                (t.clamp(0.0, 1.0) * 65535.0).round() as u16
            } else {
                0
            }
        })
        .collect();
    (quantised, 3)
}

/// A window of image pixels, `x0..x1` × `y0..y1`, never empty.
#[derive(Debug, Clone, Copy)]
struct Window {
    x0: u32,
    y0: u32,
    x1: u32,
    y1: u32,
}

impl Window {
    /// The pixels whose squares meet the box `min..=max`, clipped to a `width`×`height` image;
    /// `None` when nothing is left or the box is not finite.
    fn clipped(min: (f64, f64), max: (f64, f64), width: u32, height: u32) -> Option<Window> {
        if ![min.0, min.1, max.0, max.1].iter().all(|v| v.is_finite()) {
            return None;
        }
        // `as` saturates, so coordinates far outside the image clip instead of wrapping.
        let x0 = (min.0.floor().max(0.0) as u32).min(width);
        let y0 = (min.1.floor().max(0.0) as u32).min(height);
        let x1 = ((max.0.floor() + 1.0).max(0.0) as u32).min(width);
        let y1 = ((max.1.floor() + 1.0).max(0.0) as u32).min(height);
        (x0 < x1 && y0 < y1).then_some(Window { x0, y0, x1, y1 })
    }

    fn width(&self) -> usize {
        (self.x1 - self.x0) as usize
    }

    fn height(&self) -> usize {
        (self.y1 - self.y0) as usize
    }
}

/// Per-pixel coverage in `0..=1` over a window, blended into the image in one pass.
struct CoverageMask {
    window: Window,
    coverage: Vec<f32>,
}

impl CoverageMask {
    fn new(window: Window) -> CoverageMask {
        CoverageMask {
            window,
            coverage: vec![0.0; window.width() * window.height()],
        }
    }

    /// Blends `colour` over the image at `alpha` × each pixel's coverage.
    fn blend_into(&self, canvas: &mut RgbImage, colour: [u8; 3], alpha: f32) {
        let width = self.window.width();
        for (row_idx, row) in self.coverage.chunks_exact(width).enumerate() {
            let y = self.window.y0 + row_idx as u32;
            for (col_idx, &coverage) in row.iter().enumerate() {
                if coverage <= 0.0 {
                    continue;
                }
                let weight = alpha * coverage.min(1.0);
                let pixel = canvas.get_pixel_mut(self.window.x0 + col_idx as u32, y);
                for (channel, &target) in pixel.0.iter_mut().zip(&colour) {
                    let blended = f32::from(*channel) * (1.0 - weight) + f32::from(target) * weight;
                    *channel = blended.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

fn ring_bounds(rings: &[&[Point]]) -> Option<((f64, f64), (f64, f64))> {
    let mut points = rings.iter().flat_map(|ring| ring.iter());
    let first = points.next()?;
    let init = ((first.x, first.y), (first.x, first.y));
    Some(points.fold(init, |(min, max), p| {
        (
            (min.0.min(p.x), min.1.min(p.y)),
            (max.0.max(p.x), max.1.max(p.y)),
        )
    }))
}

fn is_finite_ring(ring: &[Point]) -> bool {
    ring.iter().all(|p| p.x.is_finite() && p.y.is_finite())
}

/// A non-horizontal polygon edge, oriented downwards, of ring `ring`.
struct Edge {
    top: (f64, f64),
    bottom: (f64, f64),
    ring: usize,
}

impl Edge {
    fn x_at(&self, y: f64) -> f64 {
        let t = (y - self.top.1) / (self.bottom.1 - self.top.1);
        self.top.0 + t * (self.bottom.0 - self.top.0)
    }
}

/// Fills the points inside some `include` ring and inside no `exclude` ring (each ring by the
/// even-odd rule) with `colour` at `alpha`, so a cell's fill leaves all of its holes out even
/// where holes overlap.
fn fill_region(
    canvas: &mut RgbImage,
    include: &[&[Point]],
    exclude: &[&[Point]],
    colour: Rgb,
    alpha: f32,
) {
    if include
        .iter()
        .chain(exclude)
        .any(|ring| !is_finite_ring(ring))
    {
        return;
    }
    let Some((min, max)) = ring_bounds(include) else {
        return;
    };
    let Some(window) = Window::clipped(min, max, canvas.width(), canvas.height()) else {
        return;
    };

    let mut edges: Vec<Edge> = Vec::new();
    for (ring_idx, ring) in include.iter().chain(exclude).enumerate() {
        if ring.len() < 3 {
            continue;
        }
        for (idx, a) in ring.iter().enumerate() {
            let b = ring[(idx + 1) % ring.len()];
            // Horizontal edges never cross a sub-scanline under the half-open rule below.
            if a.y == b.y {
                continue;
            }
            let (top, bottom) = if a.y < b.y { (a, &b) } else { (&b, a) };
            edges.push(Edge {
                top: (top.x, top.y),
                bottom: (bottom.x, bottom.y),
                ring: ring_idx,
            });
        }
    }
    edges.sort_by(|a, b| a.top.1.total_cmp(&b.top.1));

    let width = window.width();
    let mut mask = CoverageMask::new(window);
    // Partial-pixel coverage goes straight into `partial`; runs of full pixels go into `runs` as
    // a difference array, so a long span costs O(1) instead of O(length).
    let mut partial = vec![0.0f32; width + 1];
    let mut runs = vec![0.0f32; width + 1];
    let mut crossings: Vec<(f64, usize)> = Vec::new();
    let mut parity = vec![false; include.len() + exclude.len()];
    let mut active: Vec<usize> = Vec::new();
    let mut next_edge = 0;
    let sample_weight = 1.0 / FILL_SUBSAMPLES as f32;
    let (left, right) = (f64::from(window.x0), f64::from(window.x1));

    for y in window.y0..window.y1 {
        partial.fill(0.0);
        runs.fill(0.0);
        for sub in 0..FILL_SUBSAMPLES {
            let sample_y = f64::from(y) + (f64::from(sub) + 0.5) / f64::from(FILL_SUBSAMPLES);
            while next_edge < edges.len() && edges[next_edge].top.1 <= sample_y {
                active.push(next_edge);
                next_edge += 1;
            }
            // Edges cover `top <= y < bottom`, so a vertex shared by two edges counts once.
            active.retain(|&idx| edges[idx].bottom.1 > sample_y);

            crossings.clear();
            crossings.extend(
                active
                    .iter()
                    .map(|&idx| (edges[idx].x_at(sample_y), edges[idx].ring)),
            );
            crossings.sort_by(|a, b| a.0.total_cmp(&b.0));

            parity.fill(false);
            let (mut included, mut excluded) = (0usize, 0usize);
            let mut span_start: Option<f64> = None;
            for &(x, ring_idx) in &crossings {
                parity[ring_idx] = !parity[ring_idx];
                let counter = if ring_idx < include.len() {
                    &mut included
                } else {
                    &mut excluded
                };
                if parity[ring_idx] {
                    *counter += 1;
                } else {
                    *counter -= 1;
                }
                let inside = included > 0 && excluded == 0;
                match (span_start, inside) {
                    (None, true) => span_start = Some(x),
                    (Some(start), false) => {
                        add_span(
                            &mut partial,
                            &mut runs,
                            start,
                            x,
                            left,
                            right,
                            sample_weight,
                        );
                        span_start = None;
                    }
                    _ => {}
                }
            }
        }

        let row_start = (y - window.y0) as usize * width;
        let row = &mut mask.coverage[row_start..row_start + width];
        let mut run = 0.0;
        for (col_idx, coverage) in row.iter_mut().enumerate() {
            run += runs[col_idx];
            *coverage = run + partial[col_idx];
        }
    }
    mask.blend_into(canvas, colour.0, alpha);
}

/// Adds the span `start..end` of one sub-scanline, clipped to `left..right`, to a row's coverage.
fn add_span(
    partial: &mut [f32],
    runs: &mut [f32],
    start: f64,
    end: f64,
    left: f64,
    right: f64,
    weight: f32,
) {
    let (start, end) = (start.max(left) - left, end.min(right) - left);
    if end <= start {
        return;
    }
    let first = start.floor() as usize;
    let last = end.floor() as usize;
    if first == last {
        partial[first] += (end - start) as f32 * weight;
        return;
    }
    partial[first] += (first as f64 + 1.0 - start) as f32 * weight;
    runs[first + 1] += weight;
    runs[last] -= weight;
    // `last` can be one past the window when the span reaches its right edge; that slot exists
    // and is never read back as a pixel.
    partial[last] += (end - last as f64) as f32 * weight;
}

/// Strokes the closed `ring` with an opaque anti-aliased line `width` px wide, centred on it.
fn stroke_ring(canvas: &mut RgbImage, ring: &[Point], width: f64, colour: Rgb) {
    if ring.len() < 2 || !is_finite_ring(ring) {
        return;
    }
    let half_width = width / 2.0;
    // Past this distance from the centre line a pixel centre gets no coverage.
    let reach = half_width + 0.5;
    let Some((min, max)) = ring_bounds(&[ring]) else {
        return;
    };
    let Some(window) = Window::clipped(
        (min.0 - reach, min.1 - reach),
        (max.0 + reach, max.1 + reach),
        canvas.width(),
        canvas.height(),
    ) else {
        return;
    };

    let mut mask = CoverageMask::new(window);
    for (idx, a) in ring.iter().enumerate() {
        let b = &ring[(idx + 1) % ring.len()];
        stroke_segment(&mut mask, (a.x, a.y), (b.x, b.y), half_width, reach);
    }
    mask.blend_into(canvas, colour.0, 1.0);
}

/// Raises the mask's coverage along one segment. Only the pixels of each row that can lie within
/// `reach` of the segment are visited, so a long edge costs its length times the stroke width.
fn stroke_segment(
    mask: &mut CoverageMask,
    a: (f64, f64),
    b: (f64, f64),
    half_width: f64,
    reach: f64,
) {
    let window = mask.window;
    let width = window.width();
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let length_sq = dx * dx + dy * dy;

    let row_of = |y: f64| -> u32 { (y.floor().max(0.0) as u32).clamp(window.y0, window.y1) };
    let first_row = row_of(a.1.min(b.1) - reach);
    let end_row = (row_of(a.1.max(b.1) + reach) + 1).min(window.y1);
    for y in first_row..end_row {
        let centre_y = f64::from(y) + 0.5;
        // Any pixel within `reach` of the segment is within `reach` horizontally of a segment
        // point in the slab `centre_y ± reach`, so that slab bounds the columns to visit.
        let (t_low, t_high) = if dy.abs() < 1e-12 {
            (0.0, 1.0)
        } else {
            let t1 = (centre_y - reach - a.1) / dy;
            let t2 = (centre_y + reach - a.1) / dy;
            (t1.min(t2).clamp(0.0, 1.0), t1.max(t2).clamp(0.0, 1.0))
        };
        let (x_low, x_high) = (a.0 + t_low * dx, a.0 + t_high * dx);
        let from_x = x_low.min(x_high) - reach;
        let to_x = x_low.max(x_high) + reach;
        let first_col = (from_x.floor().max(0.0) as u32).clamp(window.x0, window.x1);
        let end_col = ((to_x.floor() + 1.0).max(0.0) as u32).clamp(window.x0, window.x1);

        let row_start = (y - window.y0) as usize * width;
        for x in first_col..end_col {
            let centre = (f64::from(x) + 0.5, centre_y);
            let t = if length_sq > 0.0 {
                (((centre.0 - a.0) * dx + (centre.1 - a.1) * dy) / length_sq).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let distance = (centre.0 - (a.0 + t * dx)).hypot(centre.1 - (a.1 + t * dy));
            let coverage = (half_width + 0.5 - distance).clamp(0.0, 1.0) as f32;
            let slot = &mut mask.coverage[row_start + (x - window.x0) as usize];
            *slot = slot.max(coverage);
        }
    }
}

/// Signed area and first moments (`∫x`, `∫y`) of a closed ring, relative to `origin`.
fn ring_moments(ring: &[Point], origin: Point) -> (f64, f64, f64) {
    let (mut area, mut moment_x, mut moment_y) = (0.0, 0.0, 0.0);
    for (idx, a) in ring.iter().enumerate() {
        let b = ring[(idx + 1) % ring.len()];
        let (ax, ay) = (a.x - origin.x, a.y - origin.y);
        let (bx, by) = (b.x - origin.x, b.y - origin.y);
        let cross = ax * by - bx * ay;
        area += cross / 2.0;
        moment_x += (ax + bx) * cross / 6.0;
        moment_y += (ay + by) * cross / 6.0;
    }
    // Normalise orientation so every ring contributes positively, whatever its winding.
    if area < 0.0 {
        (-area, -moment_x, -moment_y)
    } else {
        (area, moment_x, moment_y)
    }
}

/// The centroid of the cell's area with its holes subtracted. Falls back to the mean of the
/// external vertices when that area vanishes; `None` only for an empty or non-finite polygon.
fn area_centroid(cell: &CellPolygon) -> Option<(f64, f64)> {
    // Working relative to the first vertex keeps the cross products small and precise.
    let origin = *cell.external.first()?;
    let (mut area, mut moment_x, mut moment_y) = ring_moments(&cell.external, origin);
    for hole in &cell.holes {
        let (hole_area, hole_x, hole_y) = ring_moments(hole, origin);
        area -= hole_area;
        moment_x -= hole_x;
        moment_y -= hole_y;
    }
    let centre = if area.abs() > 1e-9 {
        (origin.x + moment_x / area, origin.y + moment_y / area)
    } else {
        let n = cell.external.len() as f64;
        let sum = cell
            .external
            .iter()
            .fold((0.0, 0.0), |acc, p| (acc.0 + p.x, acc.1 + p.y));
        (sum.0 / n, sum.1 / n)
    };
    (centre.0.is_finite() && centre.1.is_finite()).then_some(centre)
}

/// Draws `text` in dark bold digits on a white disc, both centred on `centre`.
fn draw_label(canvas: &mut RgbImage, text: &str, centre: (f64, f64), font_size: f32) {
    let font = &*LABEL_FONT;
    // `font_size` is the em size, as a browser's `32px` font; ab_glyph scales by line height.
    let scale = font
        .pt_to_px_scale(font_size * 0.75)
        .unwrap_or(PxScale::from(font_size));
    let scaled = font.as_scaled(scale);

    let mut glyphs = Vec::new();
    let mut caret = 0.0f32;
    let mut previous = None;
    for ch in text.chars() {
        let id = scaled.glyph_id(ch);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, id);
        }
        previous = Some(id);
        let glyph = id.with_scale_and_position(scale, point(caret, 0.0));
        caret += scaled.h_advance(id);
        if let Some(outlined) = font.outline_glyph(glyph) {
            glyphs.push(outlined);
        }
    }
    let Some(ink) = glyphs
        .iter()
        .map(|g| g.px_bounds())
        .reduce(|a, b| ab_glyph::Rect {
            min: point(a.min.x.min(b.min.x), a.min.y.min(b.min.y)),
            max: point(a.max.x.max(b.max.x), a.max.y.max(b.max.y)),
        })
    else {
        return;
    };

    let radius =
        0.5 * f64::from(ink.width()).hypot(f64::from(ink.height())) + 0.15 * f64::from(font_size);
    fill_disc(canvas, centre, radius, LABEL_DISC);

    // Glyph bounds are whole pixels, so a whole-pixel shift keeps glyph pixels on image pixels.
    let shift_x = (centre.0 - f64::from(ink.min.x + ink.max.x) / 2.0).round();
    let shift_y = (centre.1 - f64::from(ink.min.y + ink.max.y) / 2.0).round();
    if !shift_x.is_finite() || !shift_y.is_finite() {
        return;
    }
    let (width, height) = (i64::from(canvas.width()), i64::from(canvas.height()));
    for glyph in &glyphs {
        let bounds = glyph.px_bounds();
        let left = bounds.min.x as i64 + shift_x as i64;
        let top = bounds.min.y as i64 + shift_y as i64;
        glyph.draw(|gx, gy, coverage| {
            let (x, y) = (left + i64::from(gx), top + i64::from(gy));
            if coverage <= 0.0 || !(0..width).contains(&x) || !(0..height).contains(&y) {
                return;
            }
            let weight = coverage.min(1.0);
            let pixel = canvas.get_pixel_mut(x as u32, y as u32);
            for (channel, &target) in pixel.0.iter_mut().zip(&LABEL_TEXT) {
                let blended = f32::from(*channel) * (1.0 - weight) + f32::from(target) * weight;
                *channel = blended.round().clamp(0.0, 255.0) as u8;
            }
        });
    }
}

/// Fills an opaque anti-aliased disc.
fn fill_disc(canvas: &mut RgbImage, centre: (f64, f64), radius: f64, colour: [u8; 3]) {
    let reach = radius + 0.5;
    let Some(window) = Window::clipped(
        (centre.0 - reach, centre.1 - reach),
        (centre.0 + reach, centre.1 + reach),
        canvas.width(),
        canvas.height(),
    ) else {
        return;
    };
    let mut mask = CoverageMask::new(window);
    let width = window.width();
    for y in window.y0..window.y1 {
        for x in window.x0..window.x1 {
            let distance = (f64::from(x) + 0.5 - centre.0).hypot(f64::from(y) + 0.5 - centre.1);
            let idx = (y - window.y0) as usize * width + (x - window.x0) as usize;
            mask.coverage[idx] = (radius + 0.5 - distance).clamp(0.0, 1.0) as f32;
        }
    }
    mask.blend_into(canvas, colour, 1.0);
}

#[cfg(test)]
mod tests {
    use cellport_core::options::PolygonColors;
    use image::{ImageBuffer, ImageFormat, Luma, Rgba};

    use super::*;

    const GRAY: u8 = 128;
    const RED: Rgb = Rgb([255, 0, 0]);
    const BLUE: Rgb = Rgb([0, 0, 255]);

    fn gray_image(width: u32, height: u32) -> RgbImage {
        RgbImage::from_pixel(width, height, image::Rgb([GRAY; 3]))
    }

    fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<Point> {
        [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
            .into_iter()
            .map(|(x, y)| Point { x, y })
            .collect()
    }

    fn cell(polygon_id: u32, external: Vec<Point>, holes: Vec<Vec<Point>>) -> CellPolygon {
        CellPolygon {
            polygon_id,
            external,
            holes,
        }
    }

    fn prepared(cells: Vec<CellPolygon>, orphan_holes: Vec<Vec<Point>>) -> PreparedImage {
        PreparedImage {
            cells,
            orphan_holes,
            warnings: Vec::new(),
        }
    }

    fn options(show_numbers: bool, transparency: f64, stroke_width: u32) -> VisualizationOptions {
        VisualizationOptions {
            show_numbers,
            polygon_colors: PolygonColors {
                external: RED,
                internal: BLUE,
            },
            stroke_width,
            font_size: 20,
            transparency,
        }
    }

    /// The 64×64 test scene: one square cell 16..48, optionally with a centred hole 26..38.
    fn square_cell(with_hole: bool) -> PreparedImage {
        let holes = if with_hole {
            vec![rect(26.0, 26.0, 38.0, 38.0)]
        } else {
            Vec::new()
        };
        prepared(
            vec![cell(1, rect(16.0, 16.0, 48.0, 48.0), holes)],
            Vec::new(),
        )
    }

    fn blend(base: u8, colour: Rgb, alpha: f64) -> [u8; 3] {
        colour
            .0
            .map(|c| (f64::from(base) * (1.0 - alpha) + f64::from(c) * alpha).round() as u8)
    }

    #[track_caller]
    fn assert_pixel_near(image: &RgbImage, x: u32, y: u32, expected: [u8; 3]) {
        let actual = image.get_pixel(x, y).0;
        let close = actual
            .iter()
            .zip(&expected)
            .all(|(&a, &e)| a.abs_diff(e) <= 1);
        assert!(
            close,
            "pixel ({x}, {y}) is {actual:?}, expected {expected:?}"
        );
    }

    #[test]
    fn fill_blends_interior_toward_external_colour_and_leaves_outside_alone() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(false),
            &options(false, 0.3, 2),
        );
        for (x, y) in [(32, 32), (20, 20), (44, 40)] {
            assert_pixel_near(&out, x, y, blend(GRAY, RED, 0.3));
        }
        for (x, y) in [(0, 0), (5, 60), (63, 63), (60, 32)] {
            assert_eq!(out.get_pixel(x, y).0, [GRAY; 3], "pixel ({x}, {y})");
        }
    }

    #[test]
    fn hole_shows_internal_colour_instead_of_external() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(true),
            &options(false, 0.5, 1),
        );
        assert_pixel_near(&out, 32, 32, blend(GRAY, BLUE, 0.5));
        assert_pixel_near(&out, 20, 20, blend(GRAY, RED, 0.5));
    }

    #[test]
    fn orphan_hole_is_filled_with_internal_colour() {
        let scene = prepared(Vec::new(), vec![rect(10.0, 10.0, 30.0, 30.0)]);
        let out = render_visualization(&gray_image(64, 64), &scene, &options(false, 0.4, 1));
        assert_pixel_near(&out, 20, 20, blend(GRAY, BLUE, 0.4));
        assert_eq!(out.get_pixel(40, 40).0, [GRAY; 3]);
    }

    #[test]
    fn zero_transparency_leaves_interiors_unchanged() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(true),
            &options(false, 0.0, 2),
        );
        for (x, y) in [(32, 32), (20, 20), (44, 40)] {
            assert_eq!(out.get_pixel(x, y).0, [GRAY; 3], "pixel ({x}, {y})");
        }
    }

    #[test]
    fn outlines_take_their_stroke_colour() {
        let out = render_visualization(
            &gray_image(64, 64),
            &square_cell(true),
            &options(false, 0.3, 2),
        );
        // The external edge x = 16 runs between pixel columns 15 and 16: both centres are 0.5 px
        // from it, inside a 2 px stroke.
        assert_eq!(out.get_pixel(15, 32).0, RED.0);
        assert_eq!(out.get_pixel(16, 32).0, RED.0);
        assert_eq!(out.get_pixel(32, 47).0, RED.0);
        assert_eq!(out.get_pixel(26, 32).0, BLUE.0);
        assert_eq!(out.get_pixel(32, 37).0, BLUE.0);
    }

    #[test]
    fn thick_strokes_have_the_requested_width_and_soft_edges() {
        let scene = square_cell(false);
        let thick = render_visualization(&gray_image(64, 64), &scene, &options(false, 0.0, 10));
        // 5 px either side of x = 16: column 11 (centre 4.5 px away) is fully covered, column 10
        // (5.5 px away) is not touched.
        assert_eq!(thick.get_pixel(11, 32).0, RED.0);
        assert_eq!(thick.get_pixel(20, 32).0, RED.0);
        assert_eq!(thick.get_pixel(10, 32).0, [GRAY; 3]);

        // A 1 px stroke on the edge between two pixel columns half-covers both.
        let thin = render_visualization(&gray_image(64, 64), &scene, &options(false, 0.0, 1));
        assert_pixel_near(&thin, 15, 32, blend(GRAY, RED, 0.5));
        assert_pixel_near(&thin, 16, 32, blend(GRAY, RED, 0.5));
    }

    #[test]
    fn numbers_sit_in_a_white_disc_at_the_centroid() {
        let base = gray_image(64, 64);
        let scene = square_cell(false);
        let plain = render_visualization(&base, &scene, &options(false, 0.3, 2));
        let numbered = render_visualization(&base, &scene, &options(true, 0.3, 2));

        let centre = numbered.get_pixel(32, 32).0;
        let white_ish = centre.iter().all(|&c| c > 200);
        let dark = centre.iter().all(|&c| c < 80);
        assert!(
            white_ish || dark,
            "centroid pixel {centre:?} is neither disc nor glyph"
        );

        let disc_region: Vec<(u32, u32)> = (26..38)
            .flat_map(|y| (26..38).map(move |x| (x, y)))
            .collect();
        let changed = disc_region
            .iter()
            .filter(|&&(x, y)| plain.get_pixel(x, y) != numbered.get_pixel(x, y))
            .count();
        assert!(
            changed > disc_region.len() / 2,
            "only {changed} disc pixels changed"
        );
        let dark_pixels = disc_region
            .iter()
            .filter(|&&(x, y)| numbered.get_pixel(x, y).0.iter().all(|&c| c < 80))
            .count();
        let white_pixels = disc_region
            .iter()
            .filter(|&&(x, y)| numbered.get_pixel(x, y).0.iter().all(|&c| c > 240))
            .count();
        assert!(
            dark_pixels > 0 && white_pixels > 0,
            "dark {dark_pixels}, white {white_pixels}"
        );

        // Away from the label both renderings agree.
        assert_eq!(plain.get_pixel(18, 18), numbered.get_pixel(18, 18));
        assert_eq!(plain.get_pixel(5, 5), numbered.get_pixel(5, 5));
    }

    #[test]
    fn centroid_subtracts_holes() {
        let check = |external: Vec<Point>, holes: Vec<Vec<Point>>, expected: (f64, f64)| {
            let (x, y) = area_centroid(&cell(1, external, holes)).unwrap();
            assert!(
                (x - expected.0).abs() < 1e-9 && (y - expected.1).abs() < 1e-9,
                "({x}, {y})"
            );
        };
        check(rect(0.0, 0.0, 10.0, 10.0), Vec::new(), (5.0, 5.0));
        // Area 100 at (5, 5) minus area 12 at (7, 5).
        check(
            rect(0.0, 0.0, 10.0, 10.0),
            vec![rect(6.0, 2.0, 8.0, 8.0)],
            ((500.0 - 84.0) / 88.0, 5.0),
        );
        // Clockwise rings give the same answer.
        let mut clockwise = rect(0.0, 0.0, 10.0, 10.0);
        clockwise.reverse();
        check(
            clockwise,
            vec![rect(6.0, 2.0, 8.0, 8.0)],
            ((500.0 - 84.0) / 88.0, 5.0),
        );
    }

    #[test]
    fn polygons_outside_the_image_or_degenerate_draw_nothing() {
        let base = gray_image(64, 64);
        let point = |x, y| Point { x, y };
        let scene = prepared(
            vec![
                cell(
                    1,
                    rect(-100.0, -100.0, -50.0, -50.0),
                    vec![rect(-90.0, -90.0, -80.0, -80.0)],
                ),
                cell(2, rect(1e12, 1e12, 2e12, 2e12), Vec::new()),
                cell(3, Vec::new(), Vec::new()),
                cell(
                    4,
                    vec![
                        point(f64::NAN, 1.0),
                        point(2.0, 3.0),
                        point(4.0, f64::INFINITY),
                    ],
                    Vec::new(),
                ),
                cell(5, vec![point(200.0, 10.0); 3], Vec::new()),
            ],
            vec![rect(100.0, 100.0, 120.0, 120.0), Vec::new()],
        );
        let out = render_visualization(&base, &scene, &options(true, 0.5, 10));
        assert_eq!(out, base);
    }

    #[test]
    fn huge_and_tiny_inputs_do_not_panic() {
        let options = options(true, 0.5, 10);
        let covering = prepared(
            vec![
                cell(
                    7,
                    rect(-5.0, -5.0, 5.0, 5.0),
                    vec![rect(-1.0, -1.0, 1.0, 1.0)],
                ),
                cell(8, rect(-1e12, -1e12, 1e12, 1e12), Vec::new()),
            ],
            Vec::new(),
        );
        let out = render_visualization(&gray_image(1, 1), &covering, &options);
        assert_eq!(out.dimensions(), (1, 1));
        let out = render_visualization(&gray_image(64, 64), &covering, &options);
        assert_eq!(out.dimensions(), (64, 64));
        let empty = render_visualization(&RgbImage::new(0, 0), &covering, &options);
        assert_eq!(empty.dimensions(), (0, 0));
    }

    /// 1000 16-bit gray pixels: two dead (0), two hot (65535), the rest 10000 + 50·i. Sorted,
    /// rank ⌊0.005·999⌋ = 4 holds 10200 and rank ⌈0.995·999⌉ = 995 holds 59750.
    fn stretch_fixture() -> (ImageBuffer<Luma<u16>, Vec<u16>>, impl Fn(u16) -> u8) {
        let values: Vec<u16> = (0..1000u32)
            .map(|i| match i {
                0..2 => 0,
                998.. => u16::MAX,
                _ => (10_000 + 50 * i) as u16,
            })
            .collect();
        let (low, high) = (10_200.0, 59_750.0);
        let expected = move |v: u16| {
            (((f64::from(v) - low) / (high - low)).clamp(0.0, 1.0) * 255.0).round() as u8
        };
        (ImageBuffer::from_raw(40, 25, values).unwrap(), expected)
    }

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), format)
            .unwrap();
        bytes
    }

    #[track_caller]
    fn check_stretched(format: ImageFormat) {
        let (source, expected) = stretch_fixture();
        let bytes = encode(DynamicImage::ImageLuma16(source.clone()), format);
        let decoded = decode_for_display(&bytes).unwrap();
        assert_eq!(decoded.dimensions(), (40, 25));
        for (x, y, &Luma([value])) in source.enumerate_pixels() {
            let v = expected(value);
            assert_eq!(
                decoded.get_pixel(x, y).0,
                [v, v, v],
                "pixel ({x}, {y}) of value {value}"
            );
        }
        assert_eq!(decoded.get_pixel(0, 0).0, [0; 3]);
        assert_eq!(decoded.get_pixel(39, 24).0, [255; 3]);
    }

    #[test]
    fn sixteen_bit_tiff_is_contrast_stretched() {
        check_stretched(ImageFormat::Tiff);
    }

    #[test]
    fn sixteen_bit_png_is_contrast_stretched() {
        check_stretched(ImageFormat::Png);
    }

    #[test]
    fn constant_sixteen_bit_image_keeps_its_brightness() {
        let flat = ImageBuffer::<Luma<u16>, _>::from_pixel(4, 4, Luma([257 * 100]));
        let decoded =
            decode_for_display(&encode(DynamicImage::ImageLuma16(flat), ImageFormat::Png)).unwrap();
        assert!(decoded.pixels().all(|p| p.0 == [100; 3]));
    }

    #[test]
    fn eight_bit_images_keep_their_values_and_drop_alpha() {
        let rgba = ImageBuffer::from_fn(5, 3, |x, y| Rgba([x as u8 * 40, y as u8 * 60, 7, 30]));
        let decoded = decode_for_display(&encode(
            DynamicImage::ImageRgba8(rgba.clone()),
            ImageFormat::Png,
        ))
        .unwrap();
        for (x, y, pixel) in rgba.enumerate_pixels() {
            assert_eq!(decoded.get_pixel(x, y).0, [pixel[0], pixel[1], pixel[2]]);
        }
        let bmp = decode_for_display(&encode(
            DynamicImage::ImageRgb8(decoded.clone()),
            ImageFormat::Bmp,
        ))
        .unwrap();
        assert_eq!(bmp, decoded);
    }

    #[test]
    fn undecodable_bytes_are_an_error() {
        assert!(decode_for_display(b"not an image at all").is_err());
        assert!(decode_for_display(&[]).is_err());
    }

    #[test]
    fn encode_png_round_trips() {
        let image = render_visualization(
            &gray_image(64, 64),
            &square_cell(true),
            &options(true, 0.3, 3),
        );
        let png = encode_png(&image);
        assert_eq!(image::guess_format(&png).unwrap(), ImageFormat::Png);
        assert_eq!(decode_for_display(&png).unwrap(), image);
    }
}
