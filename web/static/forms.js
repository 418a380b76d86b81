// Small helpers for forms: refuse files above the size the server accepts before uploading
// them, show that an upload is under way, and ask before deleting or cancelling.
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

  document.querySelectorAll("form[data-uploading]").forEach(function (form) {
    form.addEventListener("submit", function () {
      const button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; button.textContent = form.dataset.uploading; }
    });
  });
});
