//! Shapes drawn over an RGB image: tiny-skia rasterises each one into an anti-aliased 8-bit
//! coverage mask over the shape's clipped bounding box, and the mask is blended into the image.
//!
//! The image itself never becomes a tiny-skia pixmap: that would mean converting every pixel
//! to premultiplied RGBA and back for each render, while the shapes usually cover a small part
//! of the image. Masks cost what the shapes cover, and one scratch buffer serves them all.

use cellport_core::Point;
use image::RgbImage;
use tiny_skia::{FillRule, IntSize, LineJoin, Mask, PathBuilder, PathStroker, Stroke, Transform};

/// How far past a window clipped fills reach, so that anti-aliasing at the window's edge sees
/// the true outline.
const FILL_MARGIN: f64 = 2.0;

/// An image being drawn on, with the scratch space its shapes reuse.
pub(super) struct Canvas {
    image: RgbImage,
    /// The coverage buffer, lent to a [`Mask`] for each shape and taken back after.
    scratch: Vec<u8>,
    stroker: PathStroker,
}

impl Canvas {
    pub(super) fn new(image: RgbImage) -> Canvas {
        Canvas {
            image,
            scratch: Vec::new(),
            stroker: PathStroker::new(),
        }
    }

    pub(super) fn into_image(self) -> RgbImage {
        self.image
    }

    /// Fills the area inside an odd number of `rings` (the even-odd rule: a cell's holes,
    /// passed after its outline, stay unfilled) with `colour` at opacity `alpha`.
    pub(super) fn fill_rings(&mut self, rings: &[&[Point]], colour: [u8; 3], alpha: f32) {
        if rings.iter().any(|ring| !is_finite_ring(ring)) {
            return;
        }
        let Some((min, max)) = ring_bounds(rings) else {
            return;
        };
        let Some(window) = Window::clipped(min, max, self.image.width(), self.image.height())
        else {
            return;
        };
        let mut builder = PathBuilder::new();
        for ring in rings.iter().filter(|ring| ring.len() >= 3) {
            push_ring(&mut builder, ring, window, FILL_MARGIN);
        }
        // `None` for nothing drawable: no ring, or coordinates beyond f32.
        let Some(path) = builder.finish() else {
            return;
        };
        self.cover_and_blend(window, colour, alpha, |mask| {
            mask.fill_path(&path, FillRule::EvenOdd, true, Transform::identity());
        });
    }

    /// Strokes the closed `ring` with an opaque line `width` px wide centred on it, with round
    /// joins, as a pen would draw it.
    pub(super) fn stroke_ring(&mut self, ring: &[Point], width: f32, colour: [u8; 3]) {
        if ring.len() < 2 || !is_finite_ring(ring) {
            return;
        }
        let Some((min, max)) = ring_bounds(&[ring]) else {
            return;
        };
        // Round joins reach half the width past a vertex; one more pixel holds the soft edge.
        let reach = f64::from(width) / 2.0 + 1.0;
        let Some(window) = Window::clipped(
            (min.0 - reach, min.1 - reach),
            (max.0 + reach, max.1 + reach),
            self.image.width(),
            self.image.height(),
        ) else {
            return;
        };
        let mut builder = PathBuilder::new();
        // Edges that clipping adds run along the clip box; past the stroke's reach from the
        // window, their own strokes stay out of sight.
        push_ring(&mut builder, ring, window, reach + FILL_MARGIN);
        let Some(path) = builder.finish() else {
            return;
        };
        let stroke = Stroke {
            width,
            line_join: LineJoin::Round,
            ..Stroke::default()
        };
        let Some(outline) = self.stroker.stroke(&path, &stroke, 1.0) else {
            return;
        };
        self.cover_and_blend(window, colour, 1.0, |mask| {
            mask.fill_path(&outline, FillRule::Winding, true, Transform::identity());
        });
    }

    /// Rasterises into a zeroed mask of `window`'s size with `draw`, then blends `colour` into
    /// the window at `alpha` times each pixel's coverage.
    fn cover_and_blend(
        &mut self,
        window: Window,
        colour: [u8; 3],
        alpha: f32,
        draw: impl FnOnce(&mut Mask),
    ) {
        let mut coverage = std::mem::take(&mut self.scratch);
        coverage.clear();
        coverage.resize(window.width() * window.height(), 0);
        let size = IntSize::from_wh(window.x1 - window.x0, window.y1 - window.y0)
            .expect("a window is never empty");
        let mut mask = Mask::from_vec(coverage, size).expect("the buffer has the window's size");
        draw(&mut mask);
        blend_coverage(
            &mut self.image,
            window,
            mask.data(),
            window.width(),
            colour,
            alpha,
        );
        self.scratch = mask.take();
    }

    /// Blends `colour` opaquely through `stamp` with its origin at `anchor`; what falls outside
    /// the image is left out.
    pub(super) fn blend_stamp(&mut self, stamp: &Stamp, anchor: (i64, i64), colour: [u8; 3]) {
        if stamp.width == 0 {
            return;
        }
        let height = (stamp.coverage.len() / stamp.width) as i64;
        let left = anchor.0.saturating_add(stamp.left);
        let top = anchor.1.saturating_add(stamp.top);
        let clip = |from: i64, length: i64, limit: u32| -> (u32, u32) {
            let start = from.clamp(0, i64::from(limit));
            let end = from.saturating_add(length).clamp(0, i64::from(limit));
            (start as u32, end as u32)
        };
        let (x0, x1) = clip(left, stamp.width as i64, self.image.width());
        let (y0, y1) = clip(top, height, self.image.height());
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        let window = Window { x0, y0, x1, y1 };
        let first = (i64::from(y0) - top) as usize * stamp.width + (i64::from(x0) - left) as usize;
        blend_coverage(
            &mut self.image,
            window,
            &stamp.coverage[first..],
            stamp.width,
            colour,
            1.0,
        );
    }
}

/// A coverage mask rasterised once and blended at any number of places: pixel `(i, j)` of the
/// mask lands `(left + i, top + j)` from the point it is drawn at.
pub(super) struct Stamp {
    pub(super) left: i64,
    pub(super) top: i64,
    pub(super) width: usize,
    /// Rows of `width` bytes.
    pub(super) coverage: Vec<u8>,
}

/// A disc of `radius` centred on the stamp's anchor, rasterised by tiny-skia; `None` for a
/// radius that is not positive and finite.
pub(super) fn disc_stamp(radius: f64) -> Option<Stamp> {
    if !(radius > 0.0 && radius < f64::from(u16::MAX)) {
        return None;
    }
    // The pixels that the disc's bounding box meets, the anchor being a pixel corner.
    let reach = radius.ceil();
    let side = 2 * reach as u32;
    let path = PathBuilder::from_circle(reach as f32, reach as f32, radius as f32)?;
    let mut mask = Mask::new(side, side)?;
    mask.fill_path(&path, FillRule::Winding, true, Transform::identity());
    Some(Stamp {
        left: -(reach as i64),
        top: -(reach as i64),
        width: side as usize,
        coverage: mask.take(),
    })
}

/// Fixed-point one for blending weights. Eight bits of weight keep every product in `u16`,
/// which SIMD multiplies eight or sixteen at a time on any x86-64 (32-bit lanes need SSE4.1),
/// and are precise to under one level in the result.
const ONE: u16 = 1 << 8;

/// Blends `colour` into the image over `window` with weight `alpha · coverage / 255` per pixel,
/// the window's rows of coverage starting `stride` bytes apart, in 8-bit fixed point: full coverage at `alpha` 1 writes exactly `colour`.
///
/// Masks are mostly runs: zeros around an outline or a disc, full coverage inside a fill. Runs
/// of zeros are skipped 16 bytes at a time and runs of full coverage blend with one weight in
/// a loop the compiler vectorises; only the anti-aliased edge pixels go one by one.
fn blend_coverage(
    image: &mut RgbImage,
    window: Window,
    coverage: &[u8],
    stride: usize,
    colour: [u8; 3],
    alpha: f32,
) {
    const SKIP: usize = 16;
    let alpha = (alpha.clamp(0.0, 1.0) * f32::from(ONE)).round() as u32;
    let weights: [u16; 256] =
        std::array::from_fn(|cover| ((alpha * cover as u32 + 127) / 255) as u16);
    let image_width = image.width() as usize;
    let window_width = window.width();
    let samples: &mut [u8] = image;
    for row_idx in 0..window.height() {
        let covers = &coverage[row_idx * stride..row_idx * stride + window_width];
        let start = ((window.y0 as usize + row_idx) * image_width + window.x0 as usize) * 3;
        let pixels = &mut samples[start..start + window_width * 3];
        let mut x = 0;
        while x < window_width {
            while x + SKIP <= window_width && covers[x..x + SKIP] == [0; SKIP] {
                x += SKIP;
            }
            let Some(&cover) = covers.get(x) else {
                break;
            };
            let run = if cover == u8::MAX {
                covers[x..]
                    .iter()
                    .position(|&c| c != u8::MAX)
                    .unwrap_or(window_width - x)
            } else {
                1
            };
            blend_run(
                &mut pixels[x * 3..(x + run) * 3],
                weights[usize::from(cover)],
                colour,
            );
            x += run;
        }
    }
}

/// Pixels per chunk of a long run; shorter runs (edge pixels, mostly) go one by one.
const RUN_PATTERN_PIXELS: usize = 16;

/// Blends `colour` into a run of pixels with one weight (of [`ONE`]).
fn blend_run(pixels: &mut [u8], weight: u16, colour: [u8; 3]) {
    if weight == 0 {
        return;
    }
    if weight == ONE {
        for pixel in pixels.chunks_exact_mut(3) {
            pixel.copy_from_slice(&colour);
        }
        return;
    }
    let keep = ONE - weight;
    // `sample · keep + colour · weight + ONE / 2` stays under 2^16: the weights add up to ONE.
    let add = colour.map(|c| u16::from(c) * weight + ONE / 2);
    let blend =
        |sample: &mut u8, add: u16| *sample = ((u16::from(*sample) * keep + add) >> 8) as u8;
    if pixels.len() < 3 * RUN_PATTERN_PIXELS {
        for pixel in pixels.chunks_exact_mut(3) {
            pixel
                .iter_mut()
                .zip(add)
                .for_each(|(sample, add)| blend(sample, add));
        }
        return;
    }
    // Sixteen pixels of the colour's terms, so the loop below has no per-channel indexing.
    let pattern: [u16; 3 * RUN_PATTERN_PIXELS] = std::array::from_fn(|i| add[i % 3]);
    let mut chunks = pixels.chunks_exact_mut(pattern.len());
    for chunk in chunks.by_ref() {
        chunk
            .iter_mut()
            .zip(pattern)
            .for_each(|(sample, add)| blend(sample, add));
    }
    let rest = chunks.into_remainder();
    rest.iter_mut()
        .zip(pattern)
        .for_each(|(sample, add)| blend(sample, add));
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

    /// Image coordinates relative to the window's corner, where its mask starts. The
    /// subtraction happens in f64, so far-away vertices keep their precision in f32.
    fn local(&self, x: f64, y: f64) -> (f32, f32) {
        (
            (x - f64::from(self.x0)) as f32,
            (y - f64::from(self.y0)) as f32,
        )
    }
}

/// Adds `ring` to `builder` as a closed contour in `window`'s coordinates, clipped to the
/// window grown by `margin` px when it reaches further.
///
/// tiny-skia works in f32 and fixed point: vertices millions of pixels away lose their
/// precision or overflow its edge walker. Clipping a ring to a box keeps exactly the part of
/// its interior inside the box (edges added along the box lie outside the window), so what the
/// window shows does not change.
fn push_ring(builder: &mut PathBuilder, ring: &[Point], window: Window, margin: f64) {
    let clip = ClipBox {
        left: f64::from(window.x0) - margin,
        top: f64::from(window.y0) - margin,
        right: f64::from(window.x1) + margin,
        bottom: f64::from(window.y1) + margin,
    };
    let inside = ring
        .iter()
        .all(|p| Side::ALL.iter().all(|side| side.keeps(&clip, (p.x, p.y))));
    if inside {
        push_points(builder, window, ring.iter().map(|p| (p.x, p.y)));
    } else {
        push_points(builder, window, clip_ring(ring, &clip).into_iter());
    }
}

fn push_points(
    builder: &mut PathBuilder,
    window: Window,
    mut points: impl Iterator<Item = (f64, f64)>,
) {
    let Some((x, y)) = points.next() else {
        return;
    };
    let (x, y) = window.local(x, y);
    builder.move_to(x, y);
    for (x, y) in points {
        let (x, y) = window.local(x, y);
        builder.line_to(x, y);
    }
    builder.close();
}

/// An axis-aligned box in image coordinates.
struct ClipBox {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

/// A side of a [`ClipBox`].
#[derive(Clone, Copy)]
enum Side {
    Left,
    Right,
    Top,
    Bottom,
}

impl Side {
    const ALL: [Side; 4] = [Side::Left, Side::Right, Side::Top, Side::Bottom];

    /// Whether `p` is on the box's side of this side (borders included).
    fn keeps(self, clip: &ClipBox, p: (f64, f64)) -> bool {
        match self {
            Side::Left => p.0 >= clip.left,
            Side::Right => p.0 <= clip.right,
            Side::Top => p.1 >= clip.top,
            Side::Bottom => p.1 <= clip.bottom,
        }
    }

    /// Where the segment `a`→`b`, one end kept and the other not, crosses this side.
    fn crossing(self, clip: &ClipBox, a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
        let at_x = |x: f64| (x, a.1 + (x - a.0) / (b.0 - a.0) * (b.1 - a.1));
        let at_y = |y: f64| (a.0 + (y - a.1) / (b.1 - a.1) * (b.0 - a.0), y);
        match self {
            Side::Left => at_x(clip.left),
            Side::Right => at_x(clip.right),
            Side::Top => at_y(clip.top),
            Side::Bottom => at_y(clip.bottom),
        }
    }
}

/// The closed `ring` clipped to `clip` (Sutherland–Hodgman, one side of the box at a time);
/// empty when nothing of it is inside.
fn clip_ring(ring: &[Point], clip: &ClipBox) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = ring.iter().map(|p| (p.x, p.y)).collect();
    let mut next = Vec::with_capacity(points.len() + 4);
    for side in Side::ALL {
        next.clear();
        for (idx, &current) in points.iter().enumerate() {
            let previous = points[(idx + points.len() - 1) % points.len()];
            match (side.keeps(clip, previous), side.keeps(clip, current)) {
                (true, true) => next.push(current),
                (true, false) => next.push(side.crossing(clip, previous, current)),
                (false, true) => {
                    next.push(side.crossing(clip, previous, current));
                    next.push(current);
                }
                (false, false) => {}
            }
        }
        std::mem::swap(&mut points, &mut next);
        if points.is_empty() {
            break;
        }
    }
    points
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
