-- The cell-segmentation web app's tables as its Prisma migrations create them (PostgreSQL 15):
-- snake_case tables, quoted camelCase columns, TEXT ids (UUIDs made by the client, so no
-- defaults), DateTime as TIMESTAMP(3), Prisma's names for keys, indexes and foreign keys.
-- Cellport reads these tables in place (SPEC §10); tests and `cellportctl demo --postgres` fill them.

-- CreateTable
CREATE TABLE "users" (
    "id" TEXT NOT NULL,
    "email" TEXT NOT NULL,
    "password" TEXT NOT NULL,
    "emailVerified" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "users_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "projects" (
    "id" TEXT NOT NULL,
    "title" TEXT NOT NULL,
    "description" TEXT,
    "type" TEXT NOT NULL DEFAULT 'spheroid',
    "userId" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "projects_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "images" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "originalPath" TEXT NOT NULL,
    "thumbnailPath" TEXT,
    "projectId" TEXT NOT NULL,
    "segmentationStatus" TEXT NOT NULL DEFAULT 'no_segmentation',
    "fileSize" BIGINT,
    "width" INTEGER,
    "height" INTEGER,
    "mimeType" TEXT,
    "displayOrder" INTEGER,
    "isVideoContainer" BOOLEAN NOT NULL DEFAULT false,
    "parentVideoId" TEXT,
    "frameIndex" INTEGER,
    "pixelSizeUm" DOUBLE PRECISION,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "images_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "segmentations" (
    "id" TEXT NOT NULL,
    "imageId" TEXT NOT NULL,
    "polygons" TEXT NOT NULL,
    "model" TEXT NOT NULL,
    "threshold" DOUBLE PRECISION NOT NULL,
    "confidence" DOUBLE PRECISION,
    "processingTime" INTEGER,
    "imageWidth" INTEGER,
    "imageHeight" INTEGER,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "segmentations_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "project_shares" (
    "id" TEXT NOT NULL,
    "projectId" TEXT NOT NULL,
    "sharedById" TEXT NOT NULL,
    "sharedWithId" TEXT,
    "email" TEXT,
    "shareToken" TEXT NOT NULL,
    "tokenExpiry" TIMESTAMP(3),
    "status" TEXT NOT NULL DEFAULT 'pending',
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "project_shares_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "users_email_key" ON "users"("email");

-- CreateIndex
CREATE INDEX "projects_userId_updatedAt_idx" ON "projects"("userId", "updatedAt");

-- CreateIndex
CREATE INDEX "images_projectId_segmentationStatus_idx" ON "images"("projectId", "segmentationStatus");

-- CreateIndex
CREATE INDEX "images_projectId_displayOrder_idx" ON "images"("projectId", "displayOrder");

-- CreateIndex
CREATE UNIQUE INDEX "segmentations_imageId_key" ON "segmentations"("imageId");

-- CreateIndex
CREATE UNIQUE INDEX "project_shares_shareToken_key" ON "project_shares"("shareToken");

-- CreateIndex
CREATE INDEX "project_shares_projectId_status_idx" ON "project_shares"("projectId", "status");

-- CreateIndex
CREATE INDEX "project_shares_email_status_idx" ON "project_shares"("email", "status");

-- AddForeignKey
ALTER TABLE "projects" ADD CONSTRAINT "projects_userId_fkey" FOREIGN KEY ("userId") REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "images" ADD CONSTRAINT "images_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "projects"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "segmentations" ADD CONSTRAINT "segmentations_imageId_fkey" FOREIGN KEY ("imageId") REFERENCES "images"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "project_shares" ADD CONSTRAINT "project_shares_projectId_fkey" FOREIGN KEY ("projectId") REFERENCES "projects"("id") ON DELETE CASCADE ON UPDATE CASCADE;
