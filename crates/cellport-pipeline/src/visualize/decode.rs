//! Decoding a stored image for display: any supported format and bit depth to 8-bit RGB.

use std::io::Cursor;

use image::{DynamicImage, ImageError, ImageReader, RgbImage};

/// The luminance percentiles that 16-bit images are stretched between (0.5th and 99.5th), so a
/// few hot or dead pixels do not flatten the contrast of the rest.
const STRETCH_LOW_PERCENTILE: f64 = 0.005;
const STRETCH_HIGH_PERCENTILE: f64 = 0.995;

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

#[cfg(test)]
mod tests {
    use image::{ImageBuffer, ImageFormat, Luma, Rgba};

    use super::*;

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
}
