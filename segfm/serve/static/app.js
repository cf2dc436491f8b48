// The page of `segfm serve`: three orthogonal views of the loaded volume, prompts by mouse,
// and the current target's mask over the image. Volumes are (Z, Y, X) in C order, as the
// server sends them; every voxel is drawn as an integer block of canvas pixels.
'use strict';

/** The volume axis each view fixes (its slice), and the axes of its rows and columns. */
const VIEWS = {
  axial: { fixed: 0, rows: 1, cols: 2 },
  coronal: { fixed: 1, rows: 0, cols: 2 },
  sagittal: { fixed: 2, rows: 0, cols: 1 },
};
const AXES = ['z', 'y', 'x'];
/** A press that moves further than this (CSS pixels) is a box, not a click. */
const DRAG_PIXELS = 3;
const OVERLAY = { rgb: [255, 84, 56], alpha: 0.5 };
/** The share of the window's height a view may take. */
const MAX_VIEW_HEIGHT = 0.66;

/** The page's state; tests read it as `window.segfm`. */
const state = {
  info: null,
  name: null,
  shape: null,
  spacing: null,
  image: null, // Uint8Array of Z*Y*X grey values
  mask: null, // Uint8Array of Z*Y*X 0/1
  scale: null, // canvas pixels per voxel along z, y, x
  slices: { axial: 0, coronal: 0, sagittal: 0 },
  busy: false,
  done: 0, // requests finished (answered or failed)
  lastError: null,
  ready: false,
};
window.segfm = state;

const views = {}; // per view: its canvases, slider and label
const $ = (selector) => document.querySelector(selector);
const clamp = (value, low, high) => Math.min(high, Math.max(low, value));

// ------------------------------------------------------------------------------ colours

/** An opaque pixel as ImageData's RGBA bytes read as one (little-endian) uint32. */
function pixel(r, g, b) {
  return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

const GREY = new Uint32Array(256);
const TINTED = new Uint32Array(256);
for (let g = 0; g < 256; g++) {
  GREY[g] = pixel(g, g, g);
  const { rgb, alpha } = OVERLAY;
  const [r, gr, b] = rgb.map((c) => Math.round(g * (1 - alpha) + c * alpha));
  TINTED[g] = pixel(r, gr, b);
}

// ------------------------------------------------------------------------------ geometry

/**
 * Integer canvas pixels per voxel along z, y, x: the voxels' physical proportions, as large as
 * lets every view fit `width` by `height` canvas pixels (at least one pixel per voxel).
 */
function axisScales(shape, spacing, width, height) {
  const sizes = spacing.map((s) => (Number.isFinite(s) && s > 0 ? s : 1));
  const unit = Math.min(...sizes);
  const ratios = sizes.map((s) => s / unit);
  let k = Infinity;
  for (const { rows, cols } of Object.values(VIEWS)) {
    const across = width / (shape[cols] * ratios[cols]);
    const down = height / (shape[rows] * ratios[rows]);
    k = Math.min(k, across, down);
  }
  k = Math.max(1, Math.floor(k));
  return ratios.map((ratio) => Math.max(1, Math.floor(k * ratio)));
}

/** How a view's current slice lies in the volume (strides) and on its canvas (sx, sy). */
function layout(name) {
  const { fixed, rows, cols } = VIEWS[name];
  const [, Y, X] = state.shape;
  const stride = [Y * X, X, 1];
  return {
    rows: state.shape[rows],
    cols: state.shape[cols],
    sy: state.scale[rows],
    sx: state.scale[cols],
    base: state.slices[name] * stride[fixed],
    rowStride: stride[rows],
    colStride: stride[cols],
  };
}

/** The voxel [z, y, x] at a row and column of a view's current slice. */
function voxelAt(name, [row, col]) {
  const view = VIEWS[name];
  const voxel = [0, 0, 0];
  voxel[view.fixed] = state.slices[name];
  voxel[view.rows] = row;
  voxel[view.cols] = col;
  return voxel;
}

/** The slice index along a volume axis (the slice of the view that fixes it). */
function sliceAlong(axis) {
  const name = Object.keys(VIEWS).find((n) => VIEWS[n].fixed === axis);
  return state.slices[name];
}

/** The [row, col] of a view under the pointer, clamped into the slice. */
function cellUnder(name, event) {
  const canvas = views[name].ui;
  const rect = canvas.getBoundingClientRect();
  const { rows, cols, sx, sy } = layout(name);
  const x = ((event.clientX - rect.left) * canvas.width) / rect.width;
  const y = ((event.clientY - rect.top) * canvas.height) / rect.height;
  return [clamp(Math.floor(y / sy), 0, rows - 1), clamp(Math.floor(x / sx), 0, cols - 1)];
}

// ------------------------------------------------------------------------------ drawing

/** The view's slice with the mask over it, each voxel a sx-by-sy block of pixels. */
function drawSlice(name) {
  const { rows, cols, sx, sy, base, rowStride, colStride } = layout(name);
  const ctx = views[name].image.getContext('2d');
  const width = cols * sx;
  const out = ctx.createImageData(width, rows * sy);
  const pixels = new Uint32Array(out.data.buffer);
  for (let row = 0; row < rows; row++) {
    const first = row * sy * width;
    let index = base + row * rowStride;
    for (let col = 0; col < cols; col++, index += colStride) {
      const colours = state.mask[index] ? TINTED : GREY;
      pixels.fill(colours[state.image[index]], first + col * sx, first + (col + 1) * sx);
    }
    for (let k = 1; k < sy; k++) pixels.copyWithin(first + k * width, first, first + width);
  }
  ctx.putImageData(out, 0, 0);
}

/** The mask's outline on a view's slice: every voxel edge between inside and outside. */
function strokeOutline(ctx, name) {
  const { rows, cols, sx, sy, base, rowStride, colStride } = layout(name);
  const inside = (row, col) =>
    row >= 0 && row < rows && col >= 0 && col < cols &&
    state.mask[base + row * rowStride + col * colStride] === 1;
  const edge = (x0, y0, x1, y1) => {
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
  };
  ctx.beginPath();
  for (let row = 0; row < rows; row++) {
    for (let col = 0; col < cols; col++) {
      if (!inside(row, col)) continue;
      const [x, y] = [col * sx, row * sy];
      if (!inside(row - 1, col)) edge(x, y, x + sx, y);
      if (!inside(row + 1, col)) edge(x, y + sy, x + sx, y + sy);
      if (!inside(row, col - 1)) edge(x, y, x, y + sy);
      if (!inside(row, col + 1)) edge(x + sx, y, x + sx, y + sy);
    }
  }
  ctx.strokeStyle = `rgb(${OVERLAY.rgb.join(', ')})`;
  ctx.lineWidth = 2;
  ctx.stroke();
}

/** Where the other two views cut this one, as dashed lines through voxel centres. */
function strokeCrosshair(ctx, name) {
  const view = VIEWS[name];
  const { sx, sy } = layout(name);
  const { width, height } = ctx.canvas;
  const y = (sliceAlong(view.rows) + 0.5) * sy;
  const x = (sliceAlong(view.cols) + 0.5) * sx;
  ctx.save();
  ctx.strokeStyle = 'rgba(110, 190, 255, 0.5)';
  ctx.lineWidth = 1;
  ctx.setLineDash([4, 4]);
  ctx.beginPath();
  ctx.moveTo(0, y);
  ctx.lineTo(width, y);
  ctx.moveTo(x, 0);
  ctx.lineTo(x, height);
  ctx.stroke();
  ctx.restore();
}

/** A box being drawn, from cell [row, col] to cell [row, col], both included. */
function strokeBox(ctx, name, [[r0, c0], [r1, c1]]) {
  const { sx, sy } = layout(name);
  const left = Math.min(c0, c1) * sx;
  const top = Math.min(r0, r1) * sy;
  const width = (Math.abs(c1 - c0) + 1) * sx;
  const height = (Math.abs(r1 - r0) + 1) * sy;
  ctx.strokeStyle = '#ffd84d';
  ctx.lineWidth = 2;
  ctx.strokeRect(left + 1, top + 1, width - 2, height - 2);
}

/**
 * The layer above the image: the mask's outline, the crosshair and a box being drawn. The
 * image canvas holds only the image and the mask's tint, so its pixels map back to voxels.
 */
function drawMarks(name, box = null) {
  const canvas = views[name].ui;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  strokeOutline(ctx, name);
  strokeCrosshair(ctx, name);
  if (box) strokeBox(ctx, name, box);
}

function drawAll() {
  for (const name of Object.keys(VIEWS)) {
    drawSlice(name);
    drawMarks(name);
  }
}

/** Show the slice `index` (clamped) of a view; returns the slice shown. */
function setSlice(name, index) {
  if (!(name in VIEWS)) throw new Error(`no view ${name}; use axial, coronal or sagittal`);
  if (!state.shape) return null;
  const axis = VIEWS[name].fixed;
  const value = clamp(Math.round(index), 0, state.shape[axis] - 1);
  state.slices[name] = value;
  views[name].slider.value = String(value);
  views[name].label.textContent = `${AXES[axis]} = ${value} of 0–${state.shape[axis] - 1}`;
  drawSlice(name);
  for (const other of Object.keys(VIEWS)) drawMarks(other);
  return value;
}
state.setSlice = setSlice;

/** Canvas sizes of a new volume, and every view at its middle slice. */
function configureViews() {
  for (const name of Object.keys(VIEWS)) {
    const { rows, cols, sx, sy } = layout(name);
    for (const canvas of [views[name].image, views[name].ui]) {
      canvas.width = cols * sx;
      canvas.height = rows * sy;
    }
    const n = state.shape[VIEWS[name].fixed];
    views[name].slider.max = String(n - 1);
    state.slices[name] = Math.floor(n / 2);
  }
  fitViews();
  for (const name of Object.keys(VIEWS)) setSlice(name, state.slices[name]);
}

/**
 * Display sizes: each view as large as its frame allows (canvas pixels stay whole voxels;
 * the browser scales them without smoothing, so a pixel still maps back to one voxel).
 */
function fitViews() {
  if (!state.shape) return;
  for (const name of Object.keys(VIEWS)) {
    const { image } = views[name];
    const room = image.closest('.frame').clientWidth;
    const height = window.innerHeight * MAX_VIEW_HEIGHT;
    const factor = Math.min(room / image.width, height / image.height);
    for (const canvas of [views[name].image, views[name].ui]) {
      canvas.style.width = `${Math.floor(canvas.width * factor)}px`;
      canvas.style.height = `${Math.floor(canvas.height * factor)}px`;
    }
  }
}

// ------------------------------------------------------------------------------ status

function setStatus(text, error = false) {
  const status = $('#status');
  status.textContent = error ? `Error: ${text}` : text;
  status.classList.toggle('error', error);
}

function showError(error) {
  const message = error instanceof Error ? error.message : String(error);
  state.lastError = message;
  setStatus(message, true);
}

function setBusy(busy) {
  state.busy = busy;
  document.body.classList.toggle('busy', busy);
}

function enableControls() {
  const loaded = state.shape !== null;
  for (const id of ['undo', 'new-target', 'text-button']) $(`#${id}`).disabled = !loaded;
  const download = $('#download');
  download.classList.toggle('disabled', !loaded);
  download.setAttribute('aria-disabled', String(!loaded));
}

// ------------------------------------------------------------------------------ requests

let pending = 0;
let queue = Promise.resolve();

/** Run `task` after the requests before it (so answers arrive in the order asked). */
function run(task) {
  pending += 1;
  setBusy(true);
  queue = queue
    .then(task)
    .catch(showError)
    .finally(() => {
      pending -= 1;
      state.done += 1;
      if (pending === 0) setBusy(false);
    });
  return queue;
}

/** The server's message of a failed answer (its JSON `message`, else the HTTP status). */
function messageOf(response, body) {
  if (body && typeof body.message === 'string') return body.message;
  if (body && typeof body.detail === 'string') return body.detail;
  return `the server answered ${response.status} ${response.statusText}`.trim();
}

async function jsonOf(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/** A JSON answer; errors (an HTTP error, or `status: error` with HTTP 200) are thrown. */
async function readJson(response) {
  const body = await jsonOf(response);
  if (!response.ok || body === null || body.status === 'error') {
    throw new Error(messageOf(response, body));
  }
  return body;
}

/** A mask answer: bit-packed voxels (MSB first); a JSON answer is an error, even with 200. */
async function readMask(response, count = state.image.length) {
  const type = response.headers.get('content-type') || '';
  if (!response.ok || type.includes('json')) {
    throw new Error(messageOf(response, await jsonOf(response)));
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.length < Math.ceil(count / 8)) {
    throw new Error(`the mask has ${bytes.length} bytes, fewer than ${count} voxels need`);
  }
  const mask = new Uint8Array(count);
  for (let i = 0; i < count; i++) mask[i] = (bytes[i >> 3] >> (7 - (i & 7))) & 1;
  return mask;
}

/** Show a new mask in every view; returns its number of voxels. */
function showMask(mask) {
  state.mask = mask;
  drawAll();
  let voxels = 0;
  for (let i = 0; i < mask.length; i++) voxels += mask[i];
  return voxels;
}

function post(url, body) {
  const init = { method: 'POST' };
  if (body !== undefined) {
    init.headers = { 'Content-Type': 'application/json' };
    init.body = JSON.stringify(body);
  }
  return fetch(url, init);
}

/** Send a prompt; the answer is the target's new mask. */
async function prompt(url, body, label) {
  if (!state.image) throw new Error('load an image first');
  setStatus(`${label}…`);
  const response = await post(url, body);
  const voxels = showMask(await readMask(response));
  const seconds = Number(response.headers.get('X-Segfm-Seconds'));
  setStatus(`${label}: ${seconds.toFixed(3)} s, ${voxels.toLocaleString('en')} voxels in the mask`);
}

const where = ([z, y, x]) => `z ${z}, y ${y}, x ${x}`;

function point(voxel, positive = true) {
  const label = `${positive ? 'Positive' : 'Negative'} point at ${where(voxel)}`;
  const body = { voxel_coord: voxel, positive_click: positive };
  return run(() => prompt('add_point_interaction', body, label));
}

function box(one, two) {
  const body = { outer_point_one: one, outer_point_two: two, positive_click: true };
  return run(() => prompt('add_bbox_interaction', body, `Box ${where(one)} to ${where(two)}`));
}

function textPrompt(text) {
  return run(() => prompt('api/text', { text }, `Text "${text}"`));
}

function undo() {
  return run(async () => {
    const voxels = showMask(await readMask(await post('api/undo')));
    setStatus(`Undone: ${voxels.toLocaleString('en')} voxels in the mask`);
  });
}

function newTarget() {
  return run(async () => {
    await readJson(await post('api/new_target'));
    showMask(new Uint8Array(state.image.length));
    setStatus('New target: prompt the next object');
  });
}

Object.assign(state, { point, box, textPrompt, undo, newTarget });

/** Fetch the server's display volume and mask, then show them (nothing changes on failure). */
async function showImage(meta) {
  const response = await fetch('api/image');
  if (!response.ok) throw new Error(messageOf(response, await jsonOf(response)));
  const shape = (response.headers.get('X-Segfm-Shape') || '').split(',').map(Number);
  const image = new Uint8Array(await response.arrayBuffer());
  if (shape.length !== 3 || image.length !== shape[0] * shape[1] * shape[2]) {
    throw new Error(`the image has ${image.length} bytes, not the voxels of shape ${shape}`);
  }
  const mask = await readMask(await fetch('api/mask'), image.length);
  Object.assign(state, { image, shape, name: meta.name, spacing: meta.spacing });
  const room = views.axial.image.closest('.frame').clientWidth;
  state.scale = axisScales(shape, meta.spacing, room, window.innerHeight * MAX_VIEW_HEIGHT);
  state.mask = mask;
  configureViews();
  enableControls();
  const size = shape.join(' × ');
  const spacing = meta.spacing.map((s) => Number(s.toPrecision(4))).join(' × ');
  $('#image-name').textContent = `${meta.name} · ${size}`;
  setStatus(`Loaded ${meta.name}: ${size} voxels (z, y, x), ${spacing} mm`);
  state.ready = true;
}

function loadFile(file) {
  return run(async () => {
    setStatus(`Loading ${file.name}…`);
    const form = new FormData();
    form.append('file', file, file.name);
    const meta = await readJson(await fetch('api/load', { method: 'POST', body: form }));
    state.ready = false;
    await showImage(meta);
  });
}

// ------------------------------------------------------------------------------ input

/** Mouse on a view: click = point (left positive, right negative), left drag = box. */
function attachPointer(name) {
  const canvas = views[name].ui;
  let press = null;
  const moved = (event) =>
    Math.hypot(event.clientX - press.x, event.clientY - press.y) > DRAG_PIXELS;

  canvas.addEventListener('contextmenu', (event) => event.preventDefault());
  canvas.addEventListener('pointerdown', (event) => {
    if (!state.ready || (event.button !== 0 && event.button !== 2)) return;
    canvas.setPointerCapture(event.pointerId);
    const start = cellUnder(name, event);
    press = { button: event.button, x: event.clientX, y: event.clientY, start, dragging: false };
  });
  canvas.addEventListener('pointermove', (event) => {
    if (!press || press.button !== 0) return;
    press.dragging = press.dragging || moved(event);
    if (press.dragging) drawMarks(name, [press.start, cellUnder(name, event)]);
  });
  canvas.addEventListener('pointerup', (event) => {
    if (!press || event.button !== press.button) return;
    const { start, button } = press;
    const dragging = button === 0 && (press.dragging || moved(event));
    press = null;
    drawMarks(name);
    if (dragging) box(voxelAt(name, start), voxelAt(name, cellUnder(name, event)));
    else point(voxelAt(name, start), button === 0);
  });
  canvas.addEventListener('pointercancel', () => {
    press = null;
    drawMarks(name);
  });
  canvas.addEventListener(
    'wheel',
    (event) => {
      event.preventDefault();
      if (!state.ready || event.deltaY === 0) return;
      setSlice(name, state.slices[name] + Math.sign(event.deltaY));
    },
    { passive: false },
  );
}

function attachControls() {
  const file = $('#file');
  file.addEventListener('change', () => {
    if (file.files.length) loadFile(file.files[0]).then(() => (file.value = ''));
  });
  document.addEventListener('dragover', (event) => event.preventDefault());
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) loadFile(event.dataTransfer.files[0]);
  });
  $('#undo').addEventListener('click', undo);
  $('#new-target').addEventListener('click', newTarget);
  $('#download').addEventListener('click', (event) => {
    if (!state.ready) event.preventDefault();
  });
  $('#text-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('#text').value.trim();
    if (text) textPrompt(text);
  });
  window.addEventListener('resize', fitViews);
}

function start() {
  for (const name of Object.keys(VIEWS)) {
    const section = document.getElementById(name);
    views[name] = {
      image: section.querySelector('canvas.image'),
      ui: section.querySelector('canvas.ui'),
      slider: section.querySelector('.slider'),
      label: section.querySelector('.slice-label'),
    };
    views[name].slider.addEventListener('input', (event) => {
      if (state.ready) setSlice(name, Number(event.target.value));
    });
    attachPointer(name);
  }
  attachControls();
  return run(async () => {
    const info = await readJson(await fetch('api/info'));
    state.info = info;
    $('#method').textContent = info.method;
    $('#text-form').hidden = !info.prompts.includes('text');
    $('#help').hidden = !info.prompts.includes('point');
    if (info.image) await showImage(info.image);
    else setStatus('Load a NIfTI (.nii, .nii.gz), CVPR npz or .npy volume to start.');
  });
}

start();
