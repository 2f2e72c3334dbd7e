// strokeseg serve: upload a scan, follow its case, show the mask in NiiVue with the lesion table.
// Plain script, no build step: it talks only to this server's /api/ and uses the vendored NiiVue
// (global `niivue`, from /static/vendor/niivue/niivue.umd.js).
"use strict";

(function () {
  const POLL_MS = 500;
  // A failing status request is retried this many times in a row (a server restart, a dropped
  // connection) before the page gives up on the case and says so.
  const POLL_RETRIES = 6;
  const RUNNING = ["queued", "reading", "predicting", "fusing", "writing"];

  // A server started with --token prints an address carrying ?token=...; the page keeps it for
  // every API call (as a header) and for download links (as a query parameter, which a plain link
  // can carry).
  const token = new URLSearchParams(window.location.search).get("token");

  const $ = (id) => document.getElementById(id);
  const el = {
    notice: $("notice"),
    input: $("input-statement"),
    form: $("upload-form"),
    inputs: $("channel-inputs"),
    sizeHint: $("size-hint"),
    submit: $("submit"),
    status: $("status"),
    badge: $("status-badge"),
    step: $("status-step"),
    error: $("error"),
    result: $("result"),
    viewerWrap: $("viewer-wrap"),
    canvas: $("viewer"),
    viewerError: $("viewer-error"),
    opacity: $("mask-opacity"),
    opacityValue: $("mask-opacity-value"),
    location: $("viewer-location"),
    totalVolume: $("total-volume"),
    lesionCount: $("lesion-count"),
    resampled: $("resampled"),
    seconds: $("seconds"),
    agreementRows: $("agreement-rows"),
    lesionRows: $("lesion-rows"),
    lesionTable: $("lesions"),
    locationNote: $("location-note"),
    links: {
      mask: $("download-mask"),
      table: $("download-table"),
      overlay: $("download-overlay"),
      scan: $("download-scan"),
    },
  };

  let info = null;
  // Each upload gets a new generation; answers that arrive for an older case are dropped, so a
  // slow poll of a previous case can never overwrite the page for the current one.
  let generation = 0;
  let viewer = null;
  let viewerFailed = false;
  let currentLesions = [];

  function authHeaders() {
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function withToken(url) {
    if (!token) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  // fetch an /api/ path; resolves to {ok, status, body} with the JSON body (or an {error} made up
  // from the HTTP status when the body is not JSON). Network failures reject.
  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, authHeaders(), opts.headers || {});
    const response = await fetch(path, opts);
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (body === null || typeof body !== "object") {
      body = response.ok ? {} : { error: "HTTP " + response.status + " " + response.statusText };
    }
    return { ok: response.ok, status: response.status, body: body };
  }

  function setStatus(status, text) {
    el.status.dataset.status = status;
    el.badge.textContent = status;
    el.step.textContent = text || "";
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = false;
  }

  // The page's one way to report a fault: the error status, the message, and (unless the form must stay
  // locked, as when the server cannot be used at all) the form usable again for the next upload.
  function reportError(message, releaseForm = true) {
    setStatus("error", "See the message below.");
    showError(message);
    if (releaseForm) setBusy(false);
  }

  function clearError() {
    el.error.textContent = "";
    el.error.hidden = true;
  }

  function setBusy(busy) {
    el.submit.disabled = busy || !info;
    el.form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function httpMessage(what, reply) {
    const detail = reply.body && reply.body.error ? reply.body.error : "HTTP " + reply.status;
    if (reply.status === 401) {
      return what + ": this server needs its access token. Open the address the server printed " +
        "when it started (it ends in ?token=...). (" + detail + ")";
    }
    if (reply.status === 413) {
      return what + ": the files are larger than this server accepts (" + detail + ")";
    }
    return what + " (HTTP " + reply.status + "): " + detail;
  }

  function formatMb(bytes) {
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  // ---- the form, built from /api/info -------------------------------------------------------

  function buildForm() {
    el.inputs.replaceChildren();
    info.channels.forEach((channel, i) => {
      const kind = (info.channel_kinds && info.channel_kinds[i]) || channel;
      const row = document.createElement("div");
      row.className = "channel";
      const label = document.createElement("label");
      label.htmlFor = "file-" + channel;
      const name = info.channels.length > 1 ? channel : "Scan";
      label.textContent = kind && kind !== channel ? name + " (" + kind + ")" : name;
      const input = document.createElement("input");
      input.type = "file";
      input.id = "file-" + channel;
      input.name = channel;
      input.accept = ".nii,.gz";
      input.required = true;
      input.dataset.channel = channel;
      row.append(label, input);
      el.inputs.append(row);
    });
    el.sizeHint.textContent = "Up to " + info.max_upload_mb + " MB per upload. " +
      (info.channels.length > 1 ? "One file per channel, all on the same grid." : "");
  }

  async function loadInfo() {
    let reply;
    try {
      reply = await api("/api/info");
    } catch (err) {
      reportError("Cannot reach the strokeseg server: " + err.message, false);
      return;
    }
    if (!reply.ok) {
      reportError(httpMessage("Cannot read what this server expects", reply), false);
      el.input.textContent = "Unknown until the server answers.";
      return;
    }
    info = reply.body;
    if (info.notice) el.notice.textContent = info.notice;
    el.input.textContent = info.input || "";
    buildForm();
    if (info.token_required && !token) {
      // Said before any upload, instead of after a refused one.
      reportError("This server needs its access token. Open the address the server printed when it " +
        "started (it ends in ?token=...).", false);
      return;
    }
    setBusy(false);
  }

  // ---- one case: upload, poll, show ------------------------------------------------------------

  async function submit(event) {
    event.preventDefault();
    if (!info) return;
    clearError();
    const data = new FormData();
    let total = 0;
    for (const channel of info.channels) {
      const input = $("file-" + channel);
      const file = input && input.files && input.files[0];
      if (!file) {
        showError("Choose a file for " + channel + ".");
        if (input) input.focus();
        return;
      }
      total += file.size;
      data.append(channel, file, file.name);
    }
    // A friendly early refusal; the server checks the limit itself (413).
    if (info.max_upload_mb && total > info.max_upload_mb * 1024 * 1024) {
      showError("The files total " + formatMb(total) + "; this server accepts up to " +
        info.max_upload_mb + " MB.");
      return;
    }

    const mine = ++generation;
    el.result.hidden = true;
    el.status.dataset.caseId = "";
    setBusy(true);
    setStatus("uploading", "Uploading " + formatMb(total) + "\u2026");

    let reply;
    try {
      reply = await api("/api/cases", { method: "POST", body: data });
    } catch (err) {
      if (mine !== generation) return;
      reportError("The upload did not reach the server: " + err.message);
      return;
    }
    if (mine !== generation) return;
    if (!reply.ok) {
      reportError(httpMessage("The upload was refused", reply));
      return;
    }
    const id = reply.body.id;
    el.status.dataset.caseId = id;
    showProgress(reply.body);
    poll(id, mine, 0);
  }

  function showProgress(state) {
    let text = state.step || "";
    // position counts the cases waiting before this one (0: next in line).
    if (state.status === "queued" && typeof state.position === "number") {
      text = state.position === 0 ? "waiting: next in line" :
        "waiting: " + state.position + " case" + (state.position === 1 ? "" : "s") + " ahead";
    }
    setStatus(state.status, text || state.status);
  }

  async function poll(id, mine, failures) {
    if (mine !== generation) return;
    let reply;
    try {
      reply = await api("/api/cases/" + encodeURIComponent(id));
    } catch (err) {
      if (mine !== generation) return;
      if (failures + 1 >= POLL_RETRIES) {
        reportError("Lost contact with the server while following this case: " + err.message);
        return;
      }
      window.setTimeout(() => poll(id, mine, failures + 1), POLL_MS * 2);
      return;
    }
    if (mine !== generation) return;
    if (!reply.ok) {
      reportError(httpMessage("Cannot follow this case", reply));
      return;
    }
    const state = reply.body;
    if (state.status === "done") {
      setBusy(false);
      await showResult(state, mine);
      return;
    }
    if (state.status === "failed") {
      const reason = (state.error || "unknown error").trim();
      setStatus("failed", "Choose a corrected file and press Segment again.");
      showError("The scan could not be segmented: " + reason + (/[.!?]$/.test(reason) ? "" : ".") +
        " Check the input requirements above.");
      setBusy(false);
      return;
    }
    if (RUNNING.indexOf(state.status) === -1) {
      reportError("The server reported an unknown case status: " + state.status);
      return;
    }
    showProgress(state);
    window.setTimeout(() => poll(id, mine, 0), POLL_MS);
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function fixed(value, digits) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "\u2013";
  }

  function fillTables(result) {
    el.totalVolume.textContent = fixed(result.total_volume_ml, 3);
    el.lesionCount.textContent = String(result.lesion_count);
    el.resampled.textContent = result.resampled ? "yes" : "no";
    el.seconds.textContent = fixed(result.seconds, 1);

    el.agreementRows.replaceChildren();
    const agreement = result.agreement || {};
    const planes = (info.planes || []).filter((p) => p in agreement)
      .concat(Object.keys(agreement).filter((p) => (info.planes || []).indexOf(p) === -1));
    for (const plane of planes) {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = plane;
      row.append(th);
      cell(row, fixed(agreement[plane], 3)).id = "agreement-" + plane;
      el.agreementRows.append(row);
    }

    // A scan not in MNI space has no lesion locations: its reason is said once, under the table,
    // and the location columns are left out rather than shown empty.
    const note = result.location_note || "";
    const located = !note;
    el.lesionTable.classList.toggle("unlocated", !located);
    el.locationNote.textContent = note ? "Lesion locations: " + note : "";
    el.locationNote.hidden = !note;

    el.lesionRows.replaceChildren();
    for (const lesion of result.lesions || []) {
      const row = document.createElement("tr");
      row.id = "lesion-" + lesion.lesion;
      cell(row, String(lesion.lesion), "lesion-id");
      cell(row, String(lesion.voxels), "lesion-voxels");
      cell(row, fixed(lesion.volume_ml, 3), "lesion-ml");
      cell(row, fixed(lesion.centroid_x_mm, 1), "lesion-x");
      cell(row, fixed(lesion.centroid_y_mm, 1), "lesion-y");
      cell(row, fixed(lesion.centroid_z_mm, 1), "lesion-z");
      if (located) {
        cell(row, lesion.hemisphere || "\u2013", "lesion-hemisphere location-col");
        cell(row, lesion.location_class || "\u2013", "lesion-class location-col");
        // One region per line ("; " separates them in the CSV), most voxels first.
        cell(row, (lesion.top_regions || "\u2013").split("; ").join("\n"), "lesion-regions location-col");
      }
      const show = document.createElement("button");
      show.type = "button";
      show.className = "show-lesion";
      show.textContent = "Show";
      show.setAttribute("aria-label", "Show lesion " + lesion.lesion + " in the viewer");
      show.addEventListener("click", () => goToLesion(lesion));
      cell(row, "", "lesion-show").append(show);
      el.lesionRows.append(row);
    }
    if (!result.lesions || result.lesions.length === 0) {
      const row = document.createElement("tr");
      const td = cell(row, "No lesion found.", "empty");
      td.colSpan = located ? 10 : 7;
      el.lesionRows.append(row);
    }
  }

  function fillLinks(files) {
    for (const [key, link] of Object.entries(el.links)) {
      const url = files && files[key];
      link.parentElement.hidden = !url;
      if (url) {
        link.href = withToken(url);
        link.setAttribute("download", url.split("/").pop());
      } else {
        link.removeAttribute("href");
      }
    }
  }

  async function showResult(state, mine) {
    const result = state.result;
    currentLesions = result.lesions || [];
    fillTables(result);
    fillLinks(result.files);
    el.result.hidden = false;
    setStatus("done", "Done: " + result.lesion_count + " lesion" +
      (result.lesion_count === 1 ? "" : "s") + ", " + fixed(result.total_volume_ml, 3) + " mL.");
    await showInViewer(result.files, mine);
  }

  // ---- the viewer --------------------------------------------------------------------------

  // Opaque red where the mask is 1, transparent where it is 0 (the mask is read with
  // cal_min 0.5, cal_max 1, and values below cal_min are not drawn on an overlay).
  const LESION_COLORMAP = { R: [0, 255], G: [0, 0], B: [0, 0], A: [0, 255], I: [0, 255] };

  async function ensureViewer() {
    if (viewer || viewerFailed) return viewer;
    if (typeof niivue === "undefined") {
      viewerFailed = true;
      return null;
    }
    const nv = new niivue.Niivue({
      sliceType: niivue.SLICE_TYPE.MULTIPLANAR,
      multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS,
      multiplanarLayout: niivue.MULTIPLANAR_TYPE.GRID,
      // The mask is red: a cyan crosshair stays visible on top of it.
      crosshairColor: [0.1, 0.85, 1.0, 1.0],
      // A fraction of a voxel: a full voxel hides small lesions on the models' coarse grids.
      crosshairWidth: 0.4,
      backColor: [0, 0, 0, 1],
      show3Dcrosshair: true,
      isOrientCube: false,
      logLevel: "warn",
    });
    try {
      await nv.attachToCanvas(el.canvas);
    } catch (err) {
      viewerFailed = true;
      return null;
    }
    nv.addColormap("strokeseg_lesion", LESION_COLORMAP);
    nv.onLocationChange = (data) => {
      el.location.textContent = describeLocation(data);
    };
    viewer = nv;
    window.strokesegViewer = nv;
    return nv;
  }

  // "x -19.0, y -23.0, z -13.0 mm · scan 1000 · lesion": the crosshair in world mm and what lies there.
  function describeLocation(data) {
    if (!data || !data.mm) return "";
    const mm = Array.from(data.mm).slice(0, 3).map((v) => v.toFixed(1));
    let text = "Crosshair x " + mm[0] + ", y " + mm[1] + ", z " + mm[2] + " mm";
    const values = data.values || [];
    if (values.length > 0 && isFinite(values[0].value)) {
      text += " \u00b7 scan " + Number(values[0].value.toPrecision(4));
    }
    if (values.length > 1 && isFinite(values[1].value)) {
      text += values[1].value >= 0.5 ? " \u00b7 lesion" : " \u00b7 no lesion";
    }
    return text;
  }

  async function showInViewer(files, mine) {
    el.viewerWrap.dataset.viewer = "loading";
    el.viewerError.hidden = true;
    const nv = await ensureViewer();
    if (mine !== generation) return;
    if (!nv) {
      el.viewerWrap.dataset.viewer = "unavailable";
      el.viewerError.textContent = "The viewer needs WebGL2, which this browser does not offer. " +
        "The table and the downloads below are complete.";
      el.viewerError.hidden = false;
      return;
    }
    const opacity = parseFloat(el.opacity.value);
    try {
      await nv.loadVolumes([
        { url: files.scan, headers: authHeaders(), name: files.scan.split("/").pop(), colormap: "gray" },
        {
          url: files.mask,
          headers: authHeaders(),
          name: files.mask.split("/").pop(),
          colormap: "strokeseg_lesion",
          cal_min: 0.5,
          cal_max: 1,
          opacity: opacity,
        },
      ]);
    } catch (err) {
      if (mine !== generation) return;
      el.viewerWrap.dataset.viewer = "unavailable";
      el.viewerError.textContent = "The viewer could not open the result: " + err.message +
        ". The table and the downloads below are complete.";
      el.viewerError.hidden = false;
      return;
    }
    if (mine !== generation) return;
    // Open on the largest lesion (the table lists it first) so that all three planes cut it.
    if (currentLesions.length > 0) {
      goToLesion(currentLesions[0]);
    } else {
      nv.drawScene();
    }
    el.viewerWrap.dataset.viewer = "ready";
  }

  // Centre the crosshair on a lesion's centroid (world mm, as in the table).
  function goToLesion(lesion) {
    if (!viewer || viewer.volumes.length === 0) return;
    const mm = [lesion.centroid_x_mm, lesion.centroid_y_mm, lesion.centroid_z_mm];
    if (!mm.every((v) => typeof v === "number" && isFinite(v))) return;
    viewer.scene.crosshairPos = viewer.mm2frac(mm);
    viewer.drawScene();
    viewer.createOnLocationChange();
  }

  function onOpacity() {
    const value = parseFloat(el.opacity.value);
    el.opacityValue.textContent = Math.round(value * 100) + "%";
    if (viewer && viewer.volumes.length > 1) viewer.setOpacity(1, value);
  }

  el.form.addEventListener("submit", submit);
  el.opacity.addEventListener("input", onOpacity);
  loadInfo();
})();
