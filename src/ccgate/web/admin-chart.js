// ccgate console: the admin pages' usage chart, an inline SVG built with DOM calls (no
// library, no HTML strings): stacked bars per UTC day or per model, one colour per key.

import { clear, el, formatNumber, formatUsd } from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
// Colours are the .series-N classes of console.css; keys past the last share it.
const SERIES_COLOURS = 8;

/** A date as its UTC day, "2026-11-30". */
export function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function metricOf(row, metric) {
  return metric === "tokens" ? row.input_tokens + row.output_tokens : row[metric];
}

/** Every day from `since` to `until` (inclusive), when both are set and the span is sane. */
function daysBetween(since, until) {
  if (!since || !until) return null;
  const days = [];
  for (let day = new Date(`${since}T00:00:00Z`); isoDay(day) <= until && days.length <= 366;
    day = new Date(day.getTime() + 86400000)) days.push(isoDay(day));
  return days.length <= 366 ? days : null;
}

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = String(text);
  return node;
}

/** A round axis step (1, 2 or 5 times a power of ten) of at least `raw`. */
function niceStep(raw) {
  if (!(raw > 0)) return 0;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((candidate) => candidate >= raw);
}

/**
 * Draw usage rows (`GET /admin/usage`, grouped by `group`: "day" or "model") into `holder` as
 * stacked bars, one colour per key, and the keys into `legend`. `metric` is "requests",
 * "tokens", "cost_usd" or "errors". The SVG is as wide as `holder`, so its text keeps its size
 * on a phone; each bar segment has a <title> with its key, group and value.
 */
export function drawUsageChart(holder, legend, { rows, group, since, until, metric, metricLabel }) {
  clear(holder);
  clear(legend);
  const label = (row) => (group === "model" ? (row.model ?? "(none)") : row.day);
  const groups = group === "day" ? (daysBetween(since, until) || []) : [];
  for (const row of rows) if (!groups.includes(label(row))) groups.push(label(row));
  if (group === "day") groups.sort();
  // Keys by their total, biggest first; past the palette they share one "other keys" colour.
  const totals = new Map();
  for (const row of rows) totals.set(row.key, (totals.get(row.key) || 0) + metricOf(row, metric));
  const keys = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a));
  const series = (key) => Math.min(keys.indexOf(key), SERIES_COLOURS - 1);
  const stacks = new Map(groups.map((name) => [name, []]));
  for (const row of rows) stacks.get(label(row)).push(row);
  const heights = groups.map((name) => stacks.get(name).reduce((sum, r) => sum + metricOf(r, metric), 0));
  const highest = Math.max(...heights, 0);
  // Counts get whole-number steps; only the cost axis may step by fractions.
  const step = metric === "cost_usd" || !highest ? niceStep(highest / 4)
    : Math.max(niceStep(highest / 4), 1);
  const lines = step ? Math.max(1, Math.ceil(highest / step - 1e-9)) : 4;
  const top = step * lines;

  const width = Math.max(Math.round(holder.clientWidth) || 720, 300);
  const height = 260;
  const left = 56;
  const bottom = 40;
  const plot = { w: width - left - 8, h: height - bottom - 12 };
  const chartTitle = `${metricLabel} per ${group}`;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": `${chartTitle}: ${rows.length ? "see the Usage table for the numbers" : "no usage"}`,
                             class: "chart-svg", preserveAspectRatio: "xMidYMid meet" });
  chart.append(svg("title", {}, chartTitle));
  const format = metric === "cost_usd" ? formatUsd : formatNumber;
  for (let line = 0; line <= lines; line += 1) {
    const value = step * line;
    const y = 12 + plot.h - (plot.h * line) / lines;
    chart.append(svg("line", { x1: left, x2: width - 8, y1: y, y2: y, class: "chart-grid" }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "chart-axis" },
      top ? (metric === "cost_usd" ? `$${Number(value.toPrecision(6))}` : formatNumber(value))
        : line ? "" : "0"));
  }
  const slot = groups.length ? plot.w / groups.length : plot.w;
  const barWidth = Math.max(Math.min(slot * 0.7, 48), 1);
  const labelEvery = Math.max(1, Math.ceil(groups.length / Math.floor(plot.w / 48)));
  groups.forEach((name, index) => {
    const x = left + slot * index + (slot - barWidth) / 2;
    let y = 12 + plot.h;
    for (const row of stacks.get(name).sort((a, b) => series(a.key) - series(b.key))) {
      const value = metricOf(row, metric);
      if (!value || !top) continue;
      const h = (plot.h * value) / top;
      y -= h;
      const bar = svg("rect", { x, y, width: barWidth, height: Math.max(h, 0.5),
                                class: `chart-bar series-${series(row.key)}` });
      bar.append(svg("title", {}, `${row.key} · ${name}: ${format(value)}`));
      chart.append(bar);
    }
    if (index % labelEvery === 0) {
      const short = group === "day" ? name.slice(5) : name.length > 14 ? `${name.slice(0, 13)}…` : name;
      chart.append(svg("text", { x: x + barWidth / 2, y: height - bottom + 16, "text-anchor": "middle",
                                 class: "chart-axis" }, short));
    }
  });
  holder.append(chart);
  keys.slice(0, SERIES_COLOURS).forEach((key, index) => {
    const name = index === SERIES_COLOURS - 1 && keys.length > SERIES_COLOURS ? "other keys" : key;
    legend.append(el("span", { class: "legend-item" },
      el("span", { class: `swatch series-${index}`, "aria-hidden": "true" }), name));
  });
}
