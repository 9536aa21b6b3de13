CREATE TABLE `artifacts` (
	`run_id` text NOT NULL,
	`path` text NOT NULL,
	`kind` text NOT NULL,
	`bytes` integer NOT NULL,
	PRIMARY KEY(`run_id`, `path`)
);
--> statement-breakpoint
CREATE TABLE `eval_results` (
	`run_id` text NOT NULL,
	`checkpoint` text NOT NULL,
	`task` text NOT NULL,
	`metric` text NOT NULL,
	`value` real NOT NULL,
	`stderr` real,
	`n` integer NOT NULL,
	PRIMARY KEY(`run_id`, `checkpoint`, `task`, `metric`)
);
--> statement-breakpoint
CREATE TABLE `metrics` (
	`run_id` text NOT NULL,
	`step` integer NOT NULL,
	`name` text NOT NULL,
	`value` real NOT NULL,
	PRIMARY KEY(`run_id`, `step`, `name`)
);
--> statement-breakpoint
CREATE TABLE `runs` (
	`id` text PRIMARY KEY NOT NULL,
	`name` text NOT NULL,
	`status` text NOT NULL,
	`method` text NOT NULL,
	`config` text NOT NULL,
	`device` text NOT NULL,
	`run_dir` text NOT NULL,
	`sweep_id` text,
	`error` text,
	`attempts` integer NOT NULL,
	`created_at` text NOT NULL,
	`started_at` text,
	`finished_at` text
);
--> statement-breakpoint
CREATE INDEX `runs_status` ON `runs` (`status`);--> statement-breakpoint
CREATE TABLE `spectra` (
	`run_id` text NOT NULL,
	`checkpoint` text NOT NULL,
	`layer` integer NOT NULL,
	`module` text NOT NULL,
	`threshold` real NOT NULL,
	`rank` integer NOT NULL,
	`max_rank` integer NOT NULL,
	`effective_rank` real NOT NULL,
	`stable_rank` real NOT NULL,
	PRIMARY KEY(`run_id`, `checkpoint`, `layer`, `module`, `threshold`)
);
--> statement-breakpoint
CREATE TABLE `sweeps` (
	`id` text PRIMARY KEY NOT NULL,
	`name` text NOT NULL,
	`config` text NOT NULL,
	`created_at` text NOT NULL
);
