// Small helpers for every page: refuse files above the size the server accepts before
// uploading them, show that an upload is under way, ask before deleting or cancelling, and say
// when a table is wider than the screen.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
    return unit === 0 ? n + " B" : n.toFixed(1) + " " + units[unit];
  }

  document.querySelectorAll("input[type=file][data-max-bytes]").forEach(function (input) {
    input.addEventListener("change", function () {
      const max = Number(input.dataset.maxBytes);
      const file = input.files && input.files[0];
      const message = file && file.size > max
        ? "This file is " + formatBytes(file.size) + "; at most " + formatBytes(max) + " is accepted."
        : "";
      input.setCustomValidity(message);
      const error = input.parentElement.querySelector(".field-error");
      if (error) { error.textContent = message; error.hidden = message === ""; }
    });
  });

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); }
    });
  });

  // A table wider than the screen scrolls sideways; say so above it, while that is true.
  function hintScrolling() {
    document.querySelectorAll(".scroll").forEach(function (box) {
      let hint = box.previousElementSibling;
      if (!hint || !hint.classList.contains("scroll-hint")) {
        hint = document.createElement("p");
        hint.className = "scroll-hint";
        hint.textContent = "This table is wider than the screen: scroll it sideways for more columns \u2192";
        box.parentNode.insertBefore(hint, box);
      }
      hint.classList.toggle("shown", box.scrollWidth > box.clientWidth + 1);
    });
  }
  hintScrolling();
  window.addEventListener("resize", hintScrolling);
  window.kilnHintScrolling = hintScrolling;

  document.querySelectorAll("form[data-uploading]").forEach(function (form) {
    form.addEventListener("submit", function () {
      const button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; button.textContent = form.dataset.uploading; }
    });
  });
});
