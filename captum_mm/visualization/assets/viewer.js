(function (root) {
  "use strict";
  var data = JSON.parse(root.querySelector("script.cmm-data").textContent);
  var state = { method: 0, pinned: 0, hover: null, opacity: 0.6 };
  var make = function (tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }  // never innerHTML: labels are user text
    return node;
  };
  var clamp = function (x) { return Math.max(0, Math.min(1, x)); };
  // relevance / scale in [-1, 1]: white to red for positive, white to blue for negative
  var tokenColour = function (w) {
    var fade = Math.round(255 * (1 - Math.min(1, Math.abs(w))));
    return w >= 0 ? "rgb(255, " + fade + ", " + fade + ")" : "rgb(" + fade + ", " + fade + ", 255)";
  };
  // relevance / scale clipped to [0, 1], on a jet colour map
  var jet = function (x) {
    x = clamp(x);
    return [clamp(1.5 - Math.abs(4 * x - 3)), clamp(1.5 - Math.abs(4 * x - 2)), clamp(1.5 - Math.abs(4 * x - 1))]
      .map(function (c) { return Math.round(255 * c); });
  };
  var peak = function (values) {
    return values.reduce(function (m, v) { return Math.max(m, Math.abs(v)); }, 0);
  };
  var element = function () { return state.hover === null ? state.pinned : state.hover; };
  var current = function () { return data.values[data.methods[state.method]][element()]; };
  var shown = function (strip, values) {  // a generated token is explained by the tokens before it only
    return strip.causal ? values.slice(0, element()) : values;
  };
  var scales = function (values) {
    var scale = {};
    data.strips.forEach(function (strip) {
      scale[strip.scale] = Math.max(scale[strip.scale] || 0, peak(shown(strip, values.strips[strip.name])));
    });
    return scale;
  };
  var format = function (x) { return Number(x).toPrecision(3); };

  var bar = make("div", "cmm-bar");
  var methods = make("div", "cmm-methods");
  if (data.methods.length > 1) {  // the switcher; one method is named in the line under the bar
    data.methods.forEach(function (name, index) {
      var button = make("button", null, name);
      button.type = "button";
      button.addEventListener("click", function () { state.method = index; render(); });
      methods.appendChild(button);
    });
    bar.appendChild(make("span", "cmm-heading", "Method"));
    bar.appendChild(methods);
  }
  var slider = make("input", "cmm-opacity");
  slider.type = "range"; slider.min = 0; slider.max = 100; slider.value = 60;
  slider.addEventListener("input", function () { state.opacity = slider.value / 100; render(); });
  var sliderLabel = make("label", "cmm-legend", "heat map opacity ");
  sliderLabel.appendChild(slider);
  if (data.images.length) { bar.appendChild(sliderLabel); }
  var legend = make("span", "cmm-legend");
  var ramp = make("span", "cmm-ramp");
  ramp.style.background = "linear-gradient(90deg, rgb(0,0,255), #fff, rgb(255,0,0))";
  var heatNote = "images: jet over the largest value of the output's maps, negatives as 0";
  if (data.strips.length) {
    legend.appendChild(make("span", null, "tokens: \u2212"));
    legend.appendChild(ramp);
    legend.appendChild(make("span", null, "+ (over the largest |relevance| shown)" + (data.images.length ? " \u00b7 " + heatNote : "")));
  } else { legend.appendChild(make("span", null, heatNote)); }
  bar.appendChild(legend);
  root.appendChild(bar);

  var select = function (index) { state.pinned = index; state.hover = null; render(); };
  var hoverable = function (node, index) {
    node.tabIndex = 0;  // reachable by keyboard: Enter or Space picks it
    node.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); select(index); }
    });
    node.addEventListener("mouseenter", function () { state.hover = index; render(); });
    node.addEventListener("mouseleave", function () { state.hover = null; render(); });
    node.addEventListener("click", function () { select(index); });
  };
  var detections = null;
  if (data.kind === "detection") {
    detections = make("div", "cmm-section cmm-detections");
    detections.appendChild(make("div", "cmm-heading", "Detections (click one, or its box)"));
    data.elements.forEach(function (info, index) {
      var button = make("button", null, info.label + " " + format(info.score));
      button.type = "button";
      hoverable(button, index);
      detections.appendChild(button);
    });
    root.appendChild(detections);
  }
  var body = make("div", "cmm-body");
  var text = make("div", "cmm-text");
  var rows = data.strips.map(function (strip) {
    var section = make("div", "cmm-section cmm-strip");
    section.dataset.output = strip.name;
    var heading = strip.causal ? "generated (click or hover a token)" : strip.name;
    section.appendChild(make("div", "cmm-heading", heading));
    var tokens = make("div", "cmm-tokens");
    var chips = strip.labels.map(function (label, index) {
      var chip = make("span", "cmm-token" + (strip.causal ? " cmm-pick" : ""), label);
      if (strip.causal) { hoverable(chip, index); }
      tokens.appendChild(chip);
      return chip;
    });
    section.appendChild(tokens);
    text.appendChild(section);
    return chips;
  });
  var images = make("div", "cmm-images");
  var frames = data.images.map(function (image, index) {
    var figure = make("figure", "cmm-figure");
    var frame = make("div", "cmm-frame");
    if (image.src) {
      var img = make("img"); img.src = image.src; img.alt = "image " + index; frame.appendChild(img);
    } else {
      frame.style.height = Math.round(320 * image.grid[0] / image.grid[1]) + "px";
    }
    var canvas = make("canvas", "cmm-heat");
    canvas.height = image.grid[0]; canvas.width = image.grid[1];
    frame.appendChild(canvas);
    figure.appendChild(frame);
    var caption = make("figcaption");
    figure.appendChild(caption);
    images.appendChild(figure);
    return { canvas: canvas, caption: caption, frame: frame, name: data.images.length > 1 ? "image " + index : "image" };
  });
  var boxes = [];
  var mask = null;
  if (data.kind === "detection" && frames.length) {
    data.elements.forEach(function (info, index) {
      if (!info.box) { return; }
      var box = make("div", "cmm-box");
      box.style.left = (100 * info.box[0]) + "%"; box.style.top = (100 * info.box[1]) + "%";
      box.style.width = (100 * (info.box[2] - info.box[0])) + "%"; box.style.height = (100 * (info.box[3] - info.box[1])) + "%";
      var label = box.appendChild(make("span", null, info.label));
      if (info.box[1] < 0.1) { label.style.top = "0"; }  // inside the box where there is no room above it
      box.addEventListener("click", function () { select(index); });
      frames[0].frame.appendChild(box);
      boxes[index] = box;
    });
  }
  if (data.masks && frames.length) {
    var figure = make("figure", "cmm-figure");
    var frame = make("div", "cmm-frame");
    if (data.images[0].src) { var img = make("img"); img.src = data.images[0].src; img.alt = "image"; frame.appendChild(img); }
    else { frame.style.height = frames[0].frame.style.height; }
    mask = make("img", "cmm-mask"); mask.alt = "mask";
    frame.appendChild(mask);
    figure.appendChild(frame);
    figure.appendChild(make("figcaption", null, "mask (Algorithm 1) of the selected detection"));
    images.appendChild(figure);
  }
  if (data.strips.length) { body.appendChild(text); }
  body.appendChild(images);
  var info = make("div", "cmm-info");
  root.appendChild(info);
  root.appendChild(body);

  var paint = function (frame, values, grid, scale) {
    var context = frame.canvas.getContext("2d");
    var pixels = context.createImageData(grid[1], grid[0]);
    values.forEach(function (v, i) {
      var rgb = jet(scale > 0 ? v / scale : 0);
      pixels.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * i);
    });
    context.putImageData(pixels, 0, 0);
    frame.canvas.style.opacity = state.opacity;
    var own = peak(values);
    frame.caption.textContent = frame.name + " \u00b7 max relevance " + format(own) + (own < scale ? " (colours over " + format(scale) + ")" : "");
  };
  function render() {
    var values = current();
    var scale = scales(values);
    Array.prototype.forEach.call(methods.children, function (button, index) {
      button.classList.toggle("cmm-on", index === state.method);
    });
    data.strips.forEach(function (strip, s) {
      var row = values.strips[strip.name];
      rows[s].forEach(function (chip, index) {
        var later = strip.causal && index >= element();
        var w = later || !scale[strip.scale] ? 0 : row[index] / scale[strip.scale];
        chip.style.backgroundColor = later ? "transparent" : tokenColour(w);
        chip.title = later ? "not before the selected token" : "relevance " + format(row[index]);
        chip.classList.toggle("cmm-later", later && index !== element());
        chip.classList.toggle("cmm-selected", strip.causal && index === element());
      });
    });
    var heatScale = {};  // the maps of one output (a prompt's images) share one scale
    data.images.forEach(function (image, index) {
      heatScale[image.scale] = Math.max(heatScale[image.scale] || 0, peak(values.images[index]));
    });
    frames.forEach(function (frame, index) {
      paint(frame, values.images[index], data.images[index].grid, heatScale[data.images[index].scale]);
    });
    boxes.forEach(function (box, index) { if (box) { box.classList.toggle("cmm-on", index === element()); } });
    if (detections) {
      detections.querySelectorAll("button").forEach(function (button, index) {
        button.classList.toggle("cmm-on", index === element());
      });
    }
    if (mask) { mask.src = data.masks[data.methods[state.method]][element()]; }
    var chosen = data.elements[element()];
    var what = { generation: "token", detection: "detection", classification: "prediction" }[data.kind];
    info.textContent = data.methods[state.method] + " \u00b7 explained " + what + ": " + chosen.label +
      " (p = " + format(chosen.score) + ")" + (scale.text ? " \u00b7 text scale " + format(scale.text) : "");
  }
  render();
})(document.getElementById("__ROOT_ID__"));
