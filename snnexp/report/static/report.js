/* snnexp report: draws the embedded figures, one filter bar for every figure and table, sortable tables,
 * the reload while --watch runs, and a self-test (open the page with #selftest) that writes its results
 * into the page for a headless browser to read. Every plotted point carries its run id in customdata[0];
 * FACETS maps an id to its recipe, mode, status and source. */
(function () {
  "use strict";
  var FACETS = JSON.parse(document.getElementById("facets").textContent);
  var PLOTS = [];
  var STATE_KEY = "snnexp-report:" + location.pathname;

  function clone(x) { return JSON.parse(JSON.stringify(x)); }

  function selection() {
    var sel = {};
    document.querySelectorAll("#filters fieldset").forEach(function (fs) {
      var on = [];
      fs.querySelectorAll("input:checked").forEach(function (i) { on.push(i.value); });
      sel[fs.dataset.filter] = on;
    });
    return sel;
  }

  function keeper(sel) {
    return function (id) {
      var f = FACETS[String(id)];
      if (!f) return true;
      for (var k in sel) { if (sel[k].indexOf(f[k]) < 0) return false; }
      return true;
    };
  }

  function facetOk(facet, sel) {
    for (var k in facet || {}) { if (sel[k] && sel[k].indexOf(facet[k]) < 0) return false; }
    return true;
  }

  // Filter every array of length n (top level and inside marker/error bars/line) by mask.
  function subset(obj, mask, n) {
    var out = {};
    Object.keys(obj).forEach(function (k) {
      var v = obj[k];
      if (Array.isArray(v) && v.length === n) out[k] = v.filter(function (_, i) { return mask[i]; });
      else if (v && typeof v === "object" && !Array.isArray(v) && ["marker", "error_x", "error_y", "line"].indexOf(k) >= 0)
        out[k] = subset(v, mask, n);
      else out[k] = v;
    });
    return out;
  }

  function filterTrace(t, keep, sel) {
    var meta = t.meta || {};
    if (meta.facet && !facetOk(meta.facet, sel)) return Object.assign(clone(t), { visible: false });
    if (t.type === "parcoords" && meta.ids) {
      var pm = meta.ids.map(keep), out = clone(t);
      out.dimensions = t.dimensions.map(function (d) { return subset(d, pm, meta.ids.length); });
      out.line = subset(t.line, pm, meta.ids.length);
      return out;
    }
    if (t.type === "heatmap" && meta.rows) {
      var okShown = !sel.status || sel.status.indexOf("ok") >= 0;
      var rm = meta.rows.map(function (r) { return okShown && facetOk(r, sel); });
      var cm = meta.cols.map(function (c) { return facetOk(c, sel); });
      var h = clone(t);
      var pick = function (rows) {
        return rows.filter(function (_, i) { return rm[i]; }).map(function (row) {
          return row.filter(function (_, j) { return cm[j]; });
        });
      };
      h.z = pick(t.z); h.text = pick(t.text);
      h.y = t.y.filter(function (_, i) { return rm[i]; });
      h.x = t.x.filter(function (_, j) { return cm[j]; });
      return h;
    }
    if (Array.isArray(t.customdata)) {
      var mask = t.customdata.map(function (c) { return keep(Array.isArray(c) ? c[0] : c); });
      return subset(t, mask, t.customdata.length);
    }
    return clone(t);
  }

  function visiblePoints(data, axes) {
    var pts = [];
    data.forEach(function (t) {
      if (!t.meta || t.meta.role !== "points" || (t.xaxis || "x") !== axes) return;
      (t.customdata || []).forEach(function (c, i) {
        // x: where the point is drawn (maybe dodged sideways); key: its true value (the bytes)
        pts.push({ id: c[0], x: t.x[i], key: c[1] !== null && c[1] !== undefined ? c[1] : t.x[i], y: t.y[i] });
      });
    });
    return pts;
  }

  // Traces derived from the shown points: the Pareto front and the best value so far.
  function derive(data) {
    data.forEach(function (t) {
      var role = t.meta && t.meta.role;
      if (role !== "pareto" && role !== "best") return;
      var pts = visiblePoints(data, t.xaxis || "x");
      if (role === "pareto") {
        pts = pts.filter(function (p) { var f = FACETS[String(p.id)]; return !f || f.source === t.meta.source; });
        pts.sort(function (a, b) { return a.key - b.key || b.y - a.y; });
        var best = -Infinity, fx = [], fy = [];
        pts.forEach(function (p) { if (p.y > best) { fx.push(p.x); fy.push(p.y); best = p.y; } });
        t.x = fx; t.y = fy;
      } else {
        pts.sort(function (a, b) { return a.x - b.x; });
        var max = t.meta.direction !== "minimize", cur = null, bx = [], by = [];
        pts.forEach(function (p) {
          cur = cur === null ? p.y : (max ? Math.max(cur, p.y) : Math.min(cur, p.y));
          bx.push(p.x); by.push(cur);
        });
        t.x = bx; t.y = by;
      }
    });
    return data;
  }

  function applyFilter() {
    var sel = selection(), keep = keeper(sel);
    var jobs = PLOTS.map(function (p) {
      var data = derive(p.orig.map(function (t) { return filterTrace(t, keep, sel); }));
      return Plotly.react(p.div, data, p.layout, p.config);
    });
    var shown = 0, total = 0;
    document.querySelectorAll("table tbody tr[data-id]").forEach(function (tr) {
      var on = keep(tr.dataset.id);
      tr.classList.toggle("filtered", !on);
      if (tr.closest("table.runs")) { total += 1; shown += on ? 1 : 0; }
    });
    document.getElementById("shown").textContent = shown + " of " + total + " runs shown";
    return Promise.all(jobs);
  }

  function sortTable(table, index, th) {
    var asc = th.dataset.dir !== "asc";
    table.querySelectorAll("thead th").forEach(function (h) { h.classList.remove("asc", "desc"); delete h.dataset.dir; });
    th.dataset.dir = asc ? "asc" : "desc";
    th.classList.add(asc ? "asc" : "desc");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index].dataset.v, y = b.cells[index].dataset.v;
      if (x === undefined) x = a.cells[index].textContent;
      if (y === undefined) y = b.cells[index].textContent;
      if (x === "" && y !== "") return 1;
      if (y === "" && x !== "") return -1;
      var nx = Number(x), ny = Number(y);
      var c = (x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny)) ? nx - ny
        : String(x).localeCompare(String(y), undefined, { numeric: true });
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function saveState() {
    var st = { sel: selection(), y: window.scrollY };
    try { sessionStorage.setItem(STATE_KEY, JSON.stringify(st)); } catch (e) { /* storage off: start fresh */ }
  }

  function restoreState() {
    var st = null;
    try { st = JSON.parse(sessionStorage.getItem(STATE_KEY) || "null"); } catch (e) { st = null; }
    if (!st) return null;
    document.querySelectorAll("#filters fieldset").forEach(function (fs) {
      var on = st.sel[fs.dataset.filter];
      if (!on) return;
      fs.querySelectorAll("input").forEach(function (i) { i.checked = on.indexOf(i.value) >= 0; });
    });
    return st;
  }

  function init() {
    var config = { responsive: true, displaylogo: false };
    var jobs = [];
    document.querySelectorAll("[data-fig]").forEach(function (div) {
      var spec = JSON.parse(document.getElementById(div.dataset.fig).textContent);
      var p = { div: div, orig: clone(spec.data), layout: spec.layout, config: config };
      PLOTS.push(p);
      jobs.push(Plotly.newPlot(div, spec.data, spec.layout, config));
    });
    document.querySelectorAll("#filters input").forEach(function (i) { i.addEventListener("change", applyFilter); });
    document.getElementById("filter-reset").addEventListener("click", function () {
      document.querySelectorAll("#filters input").forEach(function (i) { i.checked = true; });
      applyFilter();
    });
    document.querySelectorAll("table.sortable").forEach(function (t) {
      t.querySelectorAll("thead th").forEach(function (th, i) {
        th.title = "click to sort";
        th.addEventListener("click", function () { sortTable(t, i, th); });
      });
    });
    var refresh = Number(document.body.dataset.refresh || 0);
    var testing = location.hash.indexOf("selftest") >= 0;
    var reloads = 0;
    try { reloads = Number(sessionStorage.getItem(STATE_KEY + ":reloads") || 0); } catch (e) { reloads = 0; }
    var st = refresh ? restoreState() : null;
    var ready = Promise.all(jobs).then(applyFilter).then(function () { if (st) window.scrollTo(0, st.y); });
    window.__report = { ready: ready, applyFilter: applyFilter, plots: PLOTS, sortTable: sortTable, reloads: reloads,
      restored: st ? st.sel : null };
    // While --watch rewrites the page: reload it, keeping filter and scroll (the self-test reloads once).
    if (refresh && !(testing && reloads >= 1)) {
      if (testing) ready.then(function () {  // a filter state that must survive the reload
        var boxes = document.querySelectorAll('#filters fieldset[data-filter="mode"] input');
        if (boxes.length) { boxes[boxes.length - 1].checked = false; applyFilter(); }
      });
      setTimeout(function () {
        saveState();
        try { sessionStorage.setItem(STATE_KEY + ":reloads", String(reloads + 1)); } catch (e) { /* no storage */ }
        location.reload();
      }, 1000 * refresh);
    } else if (testing && window.__reportSelfTest) {
      ready.then(window.__reportSelfTest);
    }
  }

  init();
})();
