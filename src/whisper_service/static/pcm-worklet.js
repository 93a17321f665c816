'use strict';

/*
 * AudioWorkletProcessor "pcm-writer": microphone floats -> 16 kHz mono Int16 LE frames.
 *
 * The page asks for a 16 kHz AudioContext, so usually `sampleRate` (a global of the
 * AudioWorkletGlobalScope) is already 16000 and samples pass straight through. Some browsers
 * refuse that rate; then the context runs at the hardware rate and we resample here.
 *
 * Messages to the main thread:
 *   {type: "audio", buffer: ArrayBuffer (Int16 LE), peak: 0..1}   ~100 ms each, buffer transferred
 *   {type: "flushed"}                                              reply to {type: "flush"}
 */

const DEFAULT_TARGET_RATE = 16000;

class PcmWriter extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || DEFAULT_TARGET_RATE;
    this.frameSamples = opts.frameSamples || Math.round(this.targetRate / 10);
    // Input samples per output sample: 1 (pass through), >1 (downsample), <1 (upsample).
    this.ratio = sampleRate / this.targetRate;

    this.lowpass = this.ratio > 1 ? makeLowpass(sampleRate, 0.45 * this.targetRate) : null;
    this.boxSum = 0;      // downsampling: sum and count of the inputs in the current output slot
    this.boxCount = 0;
    this.phase = 0;       // downsampling: input samples consumed towards the next output
    this.prev = 0;        // upsampling: previous input sample and position between it and the next
    this.t = 0;

    this.peak = 0;
    this.newFrame();

    this.port.onmessage = (event) => {
      if (event.data && event.data.type === 'flush') {
        // Stop pressed: hand over the last partial frame so the end of the speech is not lost.
        this.postFrame(this.filled);
        this.port.postMessage({ type: 'flushed' });
      }
    };
  }

  newFrame() {
    this.frame = new ArrayBuffer(this.frameSamples * 2);
    this.view = new DataView(this.frame);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    // No input yet (or the mic track ended): keep the processor alive, there is nothing to do.
    if (!channels || channels.length === 0) return true;
    const samples = channels.length === 1 ? channels[0] : mixDown(channels);
    for (let i = 0; i < samples.length; i++) {
      const x = samples[i];
      const a = x < 0 ? -x : x;
      if (a > this.peak) this.peak = a;
      this.resample(x);
    }
    return true;
  }

  resample(x) {
    if (this.ratio === 1) {
      this.push(x);
    } else if (this.ratio > 1) {
      // Low-pass first: averaging alone lets hiss above 8 kHz fold back into the speech band.
      const y = this.lowpass(x);
      this.boxSum += y;
      this.boxCount += 1;
      this.phase += 1;
      // One output per `ratio` inputs; a fractional ratio (44.1k -> 16k) gives slots of 2 or 3.
      if (this.phase >= this.ratio) {
        this.push(this.boxSum / this.boxCount);
        this.boxSum = 0;
        this.boxCount = 0;
        this.phase -= this.ratio;
      }
    } else {
      // Rare (a context slower than 16 kHz): linear interpolation between neighbouring inputs.
      while (this.t < 1) {
        this.push(this.prev + (x - this.prev) * this.t);
        this.t += this.ratio;
      }
      this.t -= 1;
      this.prev = x;
    }
  }

  push(value) {
    const clamped = value > 1 ? 1 : value < -1 ? -1 : value;
    const int = clamped < 0 ? Math.round(clamped * 0x8000) : Math.round(clamped * 0x7fff);
    this.view.setInt16(this.filled * 2, int, true); // little-endian, whatever the platform
    this.filled += 1;
    if (this.filled === this.frameSamples) this.postFrame(this.filled);
  }

  postFrame(samples) {
    if (samples === 0) return;
    const buffer = samples === this.frameSamples ? this.frame : this.frame.slice(0, samples * 2);
    // Transfer rather than copy: the frame is not touched again on this side.
    this.port.postMessage({ type: 'audio', buffer, peak: this.peak }, [buffer]);
    this.peak = 0;
    this.newFrame();
  }
}

/** Average several channels into one (the node is set to mono, this is just a safety net). */
function mixDown(channels) {
  const out = new Float32Array(channels[0].length);
  for (const ch of channels) {
    for (let i = 0; i < out.length; i++) out[i] += ch[i];
  }
  for (let i = 0; i < out.length; i++) out[i] /= channels.length;
  return out;
}

/** A second-order Butterworth low-pass (RBJ cookbook biquad), returned as a per-sample function. */
function makeLowpass(rate, cutoff) {
  const w0 = (2 * Math.PI * cutoff) / rate;
  const alpha = Math.sin(w0) / (2 * Math.SQRT1_2);
  const cos = Math.cos(w0);
  const a0 = 1 + alpha;
  const b0 = (1 - cos) / 2 / a0;
  const b1 = (1 - cos) / a0;
  const b2 = b0;
  const a1 = (-2 * cos) / a0;
  const a2 = (1 - alpha) / a0;
  let x1 = 0, x2 = 0, y1 = 0, y2 = 0;
  return (x) => {
    const y = b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2;
    x2 = x1; x1 = x;
    y2 = y1; y1 = y;
    return y;
  };
}

registerProcessor('pcm-writer', PcmWriter);
