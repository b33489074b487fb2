// The dashboard's only script (served from 'self': the CSP allows no inline script).
// The fleet table refreshes itself from fleet.json; the restart link opens its <dialog>.
"use strict";

(function () {
  function cell(className, text) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    return td;
  }

  function row(device) {
    const tr = document.createElement("tr");
    tr.dataset.device = device.id;
    const name = document.createElement("td");
    name.className = "device";
    const link = document.createElement("a");
    link.href = device.href;
    link.textContent = device.id;
    name.appendChild(link);
    const online = document.createElement("td");
    online.className = "online";
    const state = document.createElement("span");
    state.className = "state " + (device.online ? "on" : "off");
    state.textContent = device.online ? "online" : "offline";
    online.appendChild(state);
    tr.append(name, online, cell("last-seen", device.last_seen),
      cell("address", device.vpn_address), cell("gateway", device.gateway),
      cell("expires", device.certificate_expires));
    return tr;
  }

  function liveFleet(table) {
    const every = Number(table.dataset.refreshMs) || 3000;
    const updated = document.getElementById("updated");
    async function refresh() {
      try {
        const answer = await fetch(table.dataset.source, {
          credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store",
        });
        if (answer.status === 401) {
          window.location.assign("/dashboard/login");  // the session ended or was revoked
          return;
        }
        if (answer.ok) {
          const body = await answer.json();
          const rows = body.devices.map(row);
          table.tBodies[0].replaceChildren(...rows);
          if (updated) updated.textContent = "updated " + new Date().toLocaleTimeString();
        } else if (updated) {
          updated.textContent = "refresh failed (" + answer.status + ")";
        }
      } catch (error) {
        if (updated) updated.textContent = "refresh failed";
      }
      window.setTimeout(refresh, every);
    }
    window.setTimeout(refresh, every);
  }

  function restartDialog(open, dialog) {
    if (typeof dialog.showModal !== "function") return;  // the link's confirm page instead
    open.addEventListener("click", function (event) {
      event.preventDefault();
      dialog.showModal();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const fleet = document.getElementById("fleet");
    if (fleet) liveFleet(fleet);
    const open = document.getElementById("restart-open");
    const dialog = document.getElementById("restart-dialog");
    if (open && dialog) restartDialog(open, dialog);
  });
})();
