// A line chart drawn as SVG: a few series over the last 15 minutes of one-second samples
// (at most 900 points each). Hand-drawn rather than a vendored library: the overview
// needs lines, a y scale and a legend, nothing more; a polyline per series redrawn once a
// second costs the browser less than a general chart library, and ships no dependency.
const NS = 'http://www.w3.org/2000/svg';
const W = 600, H = 120, PAD = 4, WINDOW = 900;

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

export class Chart {
  // series: [{key, label}]; unit: shown after the values.
  constructor(id, title, series, unit = '') {
    this.series = series;
    this.unit = unit;
    this.root = document.createElement('figure');
    this.root.className = 'card chart';
    this.root.id = id;
    this.root.style.margin = '0';
    const caption = document.createElement('figcaption');
    caption.className = 'label';
    caption.textContent = `${title} `;
    // The scale's top, as text beside the title: SVG text would be stretched with the chart.
    this.max = document.createElement('span');
    this.max.className = 'axis-top muted';
    caption.append(this.max);
    this.svg = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img',
                             'aria-label': title });
    this.svg.append(svg('line', { x1: 0, x2: W, y1: PAD, y2: PAD, class: 'grid-line' }),
                    svg('line', { x1: 0, x2: W, y1: H / 2, y2: H / 2, class: 'grid-line' }),
                    svg('line', { x1: 0, x2: W, y1: H - PAD, y2: H - PAD, class: 'grid-line' }));
    this.lines = series.map((s, i) => {
      const line = svg('polyline', { class: `s${i}`, points: '' });
      this.svg.append(line);
      return line;
    });
    this.legend = document.createElement('div');
    this.legend.className = 'legend';
    this.values = series.map((s, i) => {
      const span = document.createElement('span');
      span.className = `s${i}`;
      span.dataset.key = s.key;
      this.legend.append(span);
      return span;
    });
    this.root.append(caption, this.svg, this.legend);
  }

  // points: [[t, {key: value|null}]] oldest first.
  draw(points) {
    const shown = points.slice(-WINDOW);
    let top = 0;
    for (const [, values] of shown) {
      for (const s of this.series) top = Math.max(top, values[s.key] ?? 0);
    }
    const scale = top > 0 ? niceCeil(top) : 1;
    this.max.textContent = `(last 15 min; scale 0–${fmt(scale)}${this.unit})`;
    const x0 = shown.length ? shown[shown.length - 1][0] - WINDOW : 0;
    this.series.forEach((s, i) => {
      const coords = [];
      for (const [t, values] of shown) {
        const v = values[s.key];
        if (v === null || v === undefined) continue;
        const x = ((t - x0) / WINDOW) * W;
        const y = H - PAD - (v / scale) * (H - 2 * PAD);
        coords.push(`${x.toFixed(1)},${y.toFixed(1)}`);
      }
      this.lines[i].setAttribute('points', coords.join(' '));
      const last = shown.length ? shown[shown.length - 1][1][s.key] : null;
      this.values[i].textContent = `${s.label} ${last === null || last === undefined ? '–' : fmt(last)}${this.unit}`;
      this.values[i].dataset.value = last ?? '';
    });
    this.root.dataset.points = String(shown.length);
  }
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(v) {
  return Math.abs(v) >= 100 ? Math.round(v).toString() : Number(v.toFixed(2)).toString();
}
