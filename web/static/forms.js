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

  // Uploads show how much has been sent: the form goes through XMLHttpRequest, whose upload
  // reports progress, and the browser then follows the server's answer (the new task or run,
  // or the form again with its error).
  document.querySelectorAll("form[data-uploading]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.XMLHttpRequest || !window.FormData) { return; }
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      if (button) { button.disabled = true; button.textContent = form.dataset.uploading; }
      let bar = form.querySelector("progress.upload");
      let status = form.querySelector(".upload-status");
      if (!bar) {
        bar = document.createElement("progress");
        bar.className = "upload";
        bar.id = "upload-progress";
        bar.max = 100;
        bar.value = 0;
        status = document.createElement("span");
        status.className = "upload-status muted";
        status.id = "upload-status";
        form.appendChild(bar);
        form.appendChild(status);
      }
      const request = new XMLHttpRequest();
      request.open("POST", form.action);
      request.upload.addEventListener("progress", function (progress) {
        if (!progress.lengthComputable) { return; }
        bar.value = (progress.loaded / progress.total) * 100;
        status.textContent = formatBytes(progress.loaded) + " of " + formatBytes(progress.total) + " sent (" +
          Math.floor(bar.value) + " %)";
      });
      request.addEventListener("load", function () {
        if (request.status < 400 && request.responseURL && request.responseURL !== form.action) {
          window.location.assign(request.responseURL);
          return;
        }
        // The form again, with what was wrong: the server's page as it is.
        document.open();
        document.write(request.responseText);
        document.close();
      });
      request.addEventListener("error", function () {
        status.textContent = "The upload failed: check the connection and try again.";
        if (button) { button.disabled = false; button.textContent = "Try again"; }
      });
      request.send(new FormData(form));
    });
  });
});
