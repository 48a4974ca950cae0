// COCO compressed RLE, decoded in the browser: the "mask" of each detection in a masks answer.
// The string format is pycocotools' (common/maskApi.c, rleToString / rleFrString): each run length is written
// in 6-bit chunks, low bits first, as the character code minus 48; 0x20 marks "another chunk follows" and, in
// the last chunk, 0x10 is the sign bit (the value is two's complement over the chunks written). From the fourth
// count on (index > 2) the value is stored as its difference to the count two places back (runs of zeros follow
// runs of zeros, so those differences are small). The counts are runs over the pixels in column-major order
// (down the first column, then the next), alternating zeros and ones, starting with zeros.
// Loaded as a plain script (window.GroundscopeRle) by the page, and with require() by the tests (node).
"use strict";

(function (root) {
  // The counts of an RLE string, as pycocotools' rleFrString computes them. Plain arithmetic, not JS bitwise
  // operators: those work on 32 bits, and a 7-chunk value (images over 2^30 pixels) would wrap.
  function decodeCounts(text) {
    const counts = [];
    let p = 0;
    while (p < text.length) {
      let x = 0, k = 0, more = true, scale = 1;
      while (more) {
        if (p >= text.length) throw new Error(`RLE counts end inside a value at character ${p} of "${text}"`);
        const c = text.charCodeAt(p) - 48;
        if (c < 0 || c > 63) throw new Error(`RLE counts hold '${text[p]}' at character ${p}, outside '0'..'o'`);
        x += (c & 0x1f) * scale;
        scale *= 32;
        more = (c & 0x20) !== 0;
        p++;
        k++;
        if (!more && (c & 0x10)) x -= scale;  // sign-extend: the value is negative
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // {size: [H, W], counts: string | number[]} -> {height, width, data: Uint8Array(H * W), row-major, 1 inside}.
  // Uncompressed counts (a list, COCO's iscrowd form) are accepted too.
  function decode(rle) {
    if (!rle || !Array.isArray(rle.size) || rle.size.length !== 2) {
      throw new Error(`an RLE mask needs size [height, width], got ${JSON.stringify(rle && rle.size)}`);
    }
    const [height, width] = rle.size;
    const counts = Array.isArray(rle.counts) ? rle.counts : decodeCounts(String(rle.counts));
    const total = height * width;
    const data = new Uint8Array(total);
    let pos = 0;
    for (let i = 0; i < counts.length; i++) {
      const run = counts[i];
      if (run < 0 || pos + run > total) {
        throw new Error(`RLE run ${i} (${run}) does not fit a ${height}x${width} mask; is the mask for this image?`);
      }
      if (i % 2 === 1) {  // a run of ones, down the columns
        for (let q = pos; q < pos + run; q++) {
          const col = Math.floor(q / height), row = q - col * height;
          data[row * width + col] = 1;
        }
      }
      pos += run;
    }
    return { height, width, data };
  }

  const api = { decodeCounts, decode };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.GroundscopeRle = api;
})(typeof self !== "undefined" ? self : this);
